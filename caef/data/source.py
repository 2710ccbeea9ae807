"""What every dataset tree offers the rest of caef: split lists, image and mask paths, image-level labels.

VOC, COCO and the generated dataset each implement :class:`SegmentationSource`; the torch datasets,
datamodules and ``caef data check`` are written once against it.
"""

from __future__ import annotations

import abc
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm import tqdm

from caef.errors import DataError, DataWarning

IGNORE_INDEX = 255


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), shape ``(num_entries, 3)`` uint8; entry 255 is the ignore colour."""
    palette = np.zeros((num_entries, 3), dtype=np.uint8)
    for index in range(num_entries):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


class SegmentationSource(abc.ABC):
    """A dataset tree on disk. Class index 0 is background; image-level labels cover classes ``1..C-1``.

    With ``skip_bad`` the split lists leave out entries whose image, annotation or mask is missing or unreadable
    (and classification splits those without a class), with a :class:`~caef.errors.DataWarning`; the skipped ids
    and why are kept in :attr:`skipped_entries` and written to ``<cache_dir>/skipped/<split>.txt``. Without it
    (the default) such an entry is an error naming the file.
    """

    #: short name used in messages and manifests
    name: str = "dataset"
    #: leave bad list entries out instead of failing (see the class docstring)
    skip_bad: bool = False

    def __init__(self, root: str | Path, skip_bad: bool = False):
        self.root = Path(root)
        self.skip_bad = skip_bad
        #: split -> {image id: why it was skipped}, filled only with ``skip_bad``
        self.skipped_entries: dict[str, dict[str, str]] = {}
        self._classification_ids: dict[str, list[str]] = {}

    # -- what a subclass provides ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """All class names, background first."""

    @property
    @abc.abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Names of the splits this tree provides."""

    @abc.abstractmethod
    def split_ids(self, split: str) -> list[str]:
        """Image ids of ``split`` in list order; raises :class:`DataError` for an unknown or missing split.

        Implementations pass the listed ids through :meth:`_drop_bad_entries` so that ``skip_bad`` applies."""

    @abc.abstractmethod
    def image_path(self, image_id: str) -> Path:
        """Path of the RGB image of ``image_id``."""

    @abc.abstractmethod
    def mask_path(self, image_id: str, split: str) -> Path | None:
        """Path of the ground-truth class-index mask of ``image_id`` in ``split``, or None where the split has none."""

    @abc.abstractmethod
    def _load_class_labels(self) -> dict[str, np.ndarray]:
        """Multi-hot image-level labels (uint8, length ``num_classes - 1``) per image id."""

    # -- shared behaviour -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def palette(self) -> np.ndarray:
        return voc_palette()

    def split_file(self, split: str) -> Path | None:
        """The file that lists ``split``, where the tree has one (named in messages about its entries)."""
        return None

    def split_list_problems(self, split: str) -> list[str]:
        """Every problem of the list of ``split`` itself (ids listed twice, lines of no known form), for
        ``caef data check``; :meth:`split_ids` raises the first one."""
        return []

    @cached_property
    def class_labels(self) -> dict[str, np.ndarray]:
        return self._load_class_labels()

    def has_masks(self, split: str) -> bool:
        ids = self.split_ids(split)
        return bool(ids) and self.mask_path(ids[0], split) is not None

    def label_of(self, image_id: str) -> np.ndarray:
        try:
            return self.class_labels[image_id]
        except KeyError:
            raise DataError(
                f"{self.name}: no image-level label for image id {image_id!r} under {self.root}; "
                "its annotation is missing (add it, or remove the id from the split list)"
            ) from None

    def classification_ids(self, split: str) -> list[str]:
        """Ids of ``split`` checked for use as a classification split, up front: each must carry at least one class
        and its image file must exist (so a missing file fails now, not hours into an epoch)."""
        if split in self._classification_ids:
            return self._classification_ids[split]
        ids = self.split_ids(split)
        listed_in = self.split_file(split) or self.root
        no_class = [image_id for image_id in ids if not self.label_of(image_id).any()]
        if no_class and self.skip_bad:
            reason = f"no object class, so it cannot train a multi-label classifier (classification split {split!r})"
            self._record_skipped(split, {image_id: reason for image_id in no_class}, len(ids))
            dropped = set(no_class)
            ids = [image_id for image_id in ids if image_id not in dropped]
        elif no_class:
            shown = ", ".join(map(repr, no_class[:5])) + (f" and {len(no_class) - 5} more" if len(no_class) > 5 else "")
            subject, verb, pronoun = ("image", "has", "it") if len(no_class) == 1 else ("images", "have", "them")
            raise DataError(
                f"{self.name}: {subject} {shown} in split {split!r} {verb} no object class, so {pronoun} cannot train "
                f"a multi-label classifier; remove {pronoun} from {listed_in} (or fix the annotation)"
            )
        missing = [self.image_path(image_id) for image_id in ids if not self.image_path(image_id).is_file()]
        if missing:
            shown = ", ".join(map(str, missing[:3])) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(
                f"{self.name}: {len(missing)} image file(s) of split {split!r} (listed in {listed_in}) not found: "
                f"{shown}; re-extract the images or remove the ids from the list (`caef data check` lists every "
                "problem)"
            )
        self._classification_ids[split] = ids
        return ids

    # -- skipping bad entries -------------------------------------------------------------------
    def entry_problem(self, image_id: str, split: str) -> str | None:
        """Why entry ``image_id`` of ``split`` is unusable (image, annotation or mask missing, unreadable or of
        another size), or None. Decodes the image (at reduced scale for JPEG) and the mask."""
        try:
            image_path = self.image_path(image_id)
            size = probe_image(image_path)
            self.label_of(image_id)
            mask_path = self.mask_path(image_id, split)
            if mask_path is not None:
                _check_sizes(size, read_mask(mask_path, self.num_classes).shape[:2], image_path, mask_path)
        except DataError as exc:
            return str(exc)
        return None

    def _drop_bad_entries(self, split: str, ids: list[str]) -> list[str]:
        """``ids`` without the entries :meth:`entry_problem` rejects, where ``skip_bad`` is on (else ``ids``)."""
        if not self.skip_bad or not ids:
            return ids
        _ = self.class_labels  # a tree-wide annotation problem (no Annotations folder ...) is an error, not a skip
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:  # decoding releases the GIL
            problems = list(
                tqdm(
                    pool.map(lambda image_id: self.entry_problem(image_id, split), ids, chunksize=64),
                    total=len(ids),
                    desc=f"{self.name} {split}: checking entries",
                    unit="img",
                    disable=None,
                    leave=False,
                )
            )
        bad = {image_id: problem for image_id, problem in zip(ids, problems) if problem is not None}
        if bad:
            self._record_skipped(split, bad, len(ids))
        return [image_id for image_id, problem in zip(ids, problems) if problem is None]

    def _record_skipped(self, split: str, bad: dict[str, str], total: int) -> None:
        """Keep, write and warn about skipped entries; a split with nothing left is an error."""
        skipped = self.skipped_entries.setdefault(split, {})
        skipped.update(bad)
        first_id, first_problem = next(iter(bad.items()))
        if len(bad) >= total:
            raise DataError(
                f"{self.name}: every one of the {total} entries of split {split!r} is unusable, e.g. {first_id!r}: "
                f"{first_problem}; fix the dataset (`caef data check` lists every problem)"
            )
        where = ""
        cache_dir = getattr(self, "cache_dir", None)
        if cache_dir is not None:
            from caef.io import write_text

            path = Path(cache_dir) / "skipped" / f"{split}.txt"
            try:
                write_text(path, "".join(f"{i}\t{reason}\n" for i, reason in sorted(skipped.items())))
                where = f"; all skipped ids with the reason are in {path}"
            except OSError:
                pass  # a read-only tree: the warning and skipped_entries still tell
        warnings.warn(
            f"{self.name}: skipped {len(bad)} of {total} entries of split {split!r} (skip_bad), e.g. "
            f"{first_id!r}: {first_problem}{where}",
            DataWarning,
            stacklevel=3,
        )

    def read_image(self, image_id: str) -> np.ndarray:
        return read_image(self.image_path(image_id))

    def read_mask(self, image_id: str, split: str) -> np.ndarray:
        path = self.mask_path(image_id, split)
        if path is None:
            raise DataError(f"{self.name}: split {split!r} has no ground-truth masks (image {image_id!r})")
        return read_mask(path, self.num_classes)


#: characters an image id cannot hold: it names files (``<id>.jpg``, ``<id>.png``, ``<id>.npz``), so no path
#: separator and no dot (read as a suffix), and list lines are split at whitespace
_ID_FORBIDDEN = re.compile(r"[\s/\\.]")
_LIST_FORMS = "one image id per line (2007_000032), or SBD pairs (/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png)"


def parse_split_list(path: str | Path) -> tuple[list[str], list[str]]:
    """(ids in list order, problems) of a split list file: each line is a plain image id or an SBD-style pair of an
    image and a mask path with the same file stem; blank lines are ignored. A problem (a line of another form, an id
    the file names cannot hold, an id listed twice) names the list, the line(s) and the id; each id is kept once."""
    path = Path(path)
    ids: list[str] = []
    first_line: dict[str, int] = {}
    problems: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"cannot read split list {path}: {exc}; expected a UTF-8 text file with {_LIST_FORMS}"]
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 2:  # SBD pair: the id is the stem both paths share
            names = [PurePosixPath(field).name for field in fields]
            stems = {name.split(".")[0] for name in names}
            image_id = stems.pop()
            if stems or not image_id or any(name.count(".") != 1 for name in names) or _ID_FORBIDDEN.search(image_id):
                problems.append(
                    f"split list {path} line {number}: {line.strip()!r} is not an image/mask path pair of one id "
                    f"(<id>.jpg <id>.png, ids without dots); expected {_LIST_FORMS}"
                )
                continue
        elif len(fields) == 1:
            image_id = fields[0]
            if _ID_FORBIDDEN.search(image_id):
                problems.append(
                    f"split list {path} line {number}: id {image_id!r} cannot name an image (no '/', '\\' or '.' in "
                    f"an id); expected {_LIST_FORMS}"
                )
                continue
        else:
            problems.append(
                f"split list {path} line {number}: {len(fields)} fields in {line.strip()!r} (ids cannot hold spaces); "
                f"expected {_LIST_FORMS}"
            )
            continue
        if image_id in first_line:
            problems.append(
                f"split list {path}: id {image_id!r} is listed twice, on lines {first_line[image_id]} and {number} "
                "(it would be trained and scored twice); remove one of them"
            )
            continue
        first_line[image_id] = number
        ids.append(image_id)
    if not ids and not problems:
        problems.append(f"split list {path} is empty; it should list one image id per line")
    return ids, problems


def read_split_list(path: str | Path) -> list[str]:
    """The ids of a split list file; any problem :func:`parse_split_list` finds is a :class:`DataError` (the first
    one, with how many more `caef data check` lists)."""
    ids, problems = parse_split_list(path)
    if problems:
        more = (
            f" ({len(problems) - 1} more problem(s) in this list: `caef data check` lists them)"
            if len(problems) > 1
            else ""
        )
        raise DataError(problems[0] + more)
    return ids


def probe_image(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, after decoding all of it (JPEG at 1/8 scale, which still reads every
    byte), so a missing, truncated or corrupt file is a :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path} (is the dataset complete? run `caef data check`)")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.format == "JPEG":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            img.load()
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc} (the file is corrupt or truncated; re-extract it)") from exc
    return height, width


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as ``(H, W, 3)`` uint8, or a :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path} (is the dataset complete? run `caef data check`)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises several types for truncated/corrupt files
        raise DataError(f"cannot read image {path}: {exc} (the file is corrupt or truncated; re-extract it)") from exc


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """A class-index mask (palette or grey PNG) as ``(H, W)`` uint8, values checked against ``{0..C-1, 255}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path} (is the dataset complete? run `caef data check`)")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(
                    f"mask {path} has PIL mode {img.mode!r}; expected a palette ('P') or greyscale ('L') PNG "
                    "of class indices"
                )
            mask = np.asarray(img)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read mask {path}: {exc} (the file is corrupt or truncated; re-extract or regenerate it)"
        ) from exc
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))[:10]
        raise DataError(
            f"mask {path} has values {values} outside the class range 0..{num_classes - 1} (and 255 = ignore); "
            "is it a colour PNG instead of class indices, or from another dataset?"
        )
    return mask


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path | None) -> None:
    _check_sizes(image.shape[:2], mask.shape[:2], image_path, mask_path)


def _check_sizes(image_hw: tuple[int, ...], mask_hw: tuple[int, ...], image_path: Path, mask_path: Path | None) -> None:
    if tuple(image_hw) != tuple(mask_hw):
        raise DataError(
            f"image {image_path} is {image_hw[1]}x{image_hw[0]} but its mask {mask_path} is "
            f"{mask_hw[1]}x{mask_hw[0]} (width x height); they must match: the mask belongs to another image or "
            "was resized, so re-extract (or regenerate) it, or remove the id from the split list"
        )


def write_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a class-index mask as a palette PNG (VOC convention), atomically."""
    from caef.io import atomic_path

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette((voc_palette() if palette is None else palette).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
