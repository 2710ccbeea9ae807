"""The IDX format of the MNIST family (``*-images-idx3-ubyte`` + ``*-labels-idx1-ubyte``, gzip or plain), and
where the default object source, Fashion-MNIST, is looked for.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), the dimensions as
big-endian int32, then the values in row-major order. Only unsigned bytes (type 0x08) are used by the family.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caef.errors import DataError

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
#: where Fashion-MNIST is looked for, in order: the files themselves in data/fashion-mnist/, where
#: torchvision.datasets.FashionMNIST("data/fashion-mnist", download=True) puts them, Debian's dataset-fashion-mnist
FASHION_MNIST_DIRS = (
    Path("data/fashion-mnist"),
    Path("data/fashion-mnist/FashionMNIST/raw"),
    Path("/usr/share/datasets/fashion-mnist"),
)
_IMAGES = re.compile(r"^(?P<prefix>.+)-images-idx3-ubyte(?:\.gz)?$")


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (gzip-compressed or plain, told by its content)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; download it again") from exc
    expected = bytes((0, 0, _UBYTE, ndim))
    if raw[:4] != expected:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic number 0x{raw[:4].hex() or 'empty'}, "
            f"expected 0x{expected.hex()}); pass a *-images-idx3-ubyte or *-labels-idx1-ubyte file (gzip or plain)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated (no room for its {ndim} dimensions); download it again")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(
            f"IDX file {path} holds {len(raw) - header} bytes of data, its header says {shape} = {size}; "
            "download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@dataclass(frozen=True)
class ObjectSet:
    """Object images (N, h, w) uint8 and their class labels (N,) from one ``<prefix>`` pair of IDX files (from
    its ``offset``-th pair on, for a range of the set)."""

    prefix: str
    images: np.ndarray
    labels: np.ndarray
    offset: int = 0

    def range(self, start: int, stop: int) -> ObjectSet:
        """Objects ``start`` to ``stop`` (exclusive; 0 = the end) of this set, or a one-line error naming it."""
        stop = stop or len(self.labels)
        if not 0 <= start < stop <= len(self.labels):
            raise DataError(
                f"objects {start}..{stop} are outside the {self.prefix!r} IDX set of {len(self.labels)} objects; "
                f"pass --objects-from/--objects-to within 0..{len(self.labels)}"
            )
        return ObjectSet(self.prefix, self.images[start:stop], self.labels[start:stop], self.offset + start)


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_prefixes(folder: Path) -> list[str]:
    """The ``<prefix>`` of every ``<prefix>-images-idx3-ubyte(.gz)`` in ``folder`` that has its labels file."""
    if not folder.is_dir():
        return []
    found = {m["prefix"] for f in folder.iterdir() if (m := _IMAGES.match(f.name))}
    return sorted(p for p in found if _file(folder, f"{p}-labels-idx1-ubyte") is not None)


def read_object_sets(folder: str | Path) -> dict[str, ObjectSet]:
    """Every images + labels pair in ``folder`` (Fashion-MNIST: ``train`` with 60,000, ``t10k`` with 10,000)."""
    folder = Path(folder)
    prefixes = idx_prefixes(folder)
    if not prefixes:
        raise DataError(
            f"no IDX object source in {folder}: it needs <prefix>-images-idx3-ubyte(.gz) and "
            "<prefix>-labels-idx1-ubyte(.gz) (e.g. train-images-idx3-ubyte.gz); point --source at such a folder"
        )
    sets = {}
    for prefix in prefixes:
        images_path = _file(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _file(folder, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
        if len(images) != len(labels) or not len(images):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
                "they must be one pair of the same non-empty set"
            )
        sets[prefix] = ObjectSet(prefix, images, labels)
    return sets


def default_source() -> Path:
    """The first folder of :data:`FASHION_MNIST_DIRS` holding IDX files, else a one-line error naming both ways."""
    for folder in FASHION_MNIST_DIRS:
        if idx_prefixes(folder):
            return folder
    raise DataError(
        "Fashion-MNIST not found in data/fashion-mnist/ (or its FashionMNIST/raw/) nor /usr/share/datasets/"
        'fashion-mnist/: get it with `python -c "import torchvision; torchvision.datasets.FashionMNIST('
        "'data/fashion-mnist', download=True)\"` or `apt-get install dataset-fashion-mnist`, or pass --source DIR"
    )
