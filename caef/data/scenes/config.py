"""The scene dataset's recipe (:class:`ScenesConfig`) and its class names (file-name safe)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from caef.errors import DataError

FORMAT = "caef-scenes"
FORMAT_VERSION = 1
MANIFEST = "caef_scenes.json"
META = "caef_meta/objects.json"

#: Fashion-MNIST's labels 0..9 (torchvision: "T-shirt/top", "Trouser", ..., "Ankle boot"), safe as XML names and
#: as lines of classes.txt (no '/', no spaces)
FASHION_MNIST_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip
CLASS_PRESETS = {
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "mnist": tuple(f"digit_{d}" for d in range(10)),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}
BACKGROUNDS = ("textured", "plain")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ScenesConfig:
    num_images: int = 1000
    size: int = 128
    seed: int = 0
    max_objects: int = 3  # objects per image drawn uniformly from 1..max_objects
    min_scale: int = 40  # an object's 28 px image is scaled (bicubic) to a side drawn from min_scale..max_scale
    max_scale: int = 80
    threshold: float = 0.1  # mask: pixels above this fraction of white, holes filled
    min_visible: float = 0.5  # bounded occlusion: every object keeps this fraction of its mask visible
    texture_contrast: float = 0.25  # amplitude of an object's own texture over its shading
    noise: float = 0.02  # per-pixel Gaussian noise (image values in 0..1)
    val_fraction: float = 0.2
    score_fraction: float = 0.3  # fraction of train_aug also listed in `train` (the CAM scoring split)
    jpeg_quality: int = 90
    class_names: str = "fashion-mnist"  # a preset (fashion-mnist, mnist, kmnist) or a comma-separated list
    background: str = "textured"  # "textured" (smooth noise + stripes/checks/blotches) or "plain" (flat colour)
    objects_from: int = 0  # train_aug draws its objects from [objects_from, objects_to) of the training IDX set,
    objects_to: int = 0  # 0 = its end: disjoint ranges keep two trees' objects apart (pretraining vs scenes)

    def validate(self) -> ScenesConfig:
        ints = {
            "num_images": 2, "size": 32, "seed": 0, "max_objects": 1, "min_scale": 8, "jpeg_quality": 1,
            "objects_from": 0, "objects_to": 0,
        }  # fmt: skip
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DataError(f"ScenesConfig.{name} must be an integer >= {low}, got {value!r}")
        if not self.min_scale <= self.max_scale <= self.size:
            raise DataError(
                f"ScenesConfig needs min_scale <= max_scale <= size, got {self.min_scale}, {self.max_scale}, "
                f"{self.size}"
            )
        for name in ("threshold", "min_visible", "texture_contrast", "noise", "val_fraction", "score_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise DataError(f"ScenesConfig.{name} must be a number in [0, 1], got {value!r}")
        if self.background not in BACKGROUNDS:
            raise DataError(f"ScenesConfig.background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.objects_to and self.objects_to <= self.objects_from:
            raise DataError(
                f"ScenesConfig needs objects_from < objects_to (or objects_to=0 for the end of the set), got "
                f"{self.objects_from}, {self.objects_to}"
            )
        n_val, n_train = split_sizes(self)
        if not 1 <= n_val < self.num_images or n_train < 1:
            raise DataError(
                f"ScenesConfig.val_fraction={self.val_fraction} leaves {n_val} of {self.num_images} images for val; "
                "both val and train_aug need at least one image"
            )
        self.names()  # validates the class names
        return self

    def names(self) -> tuple[str, ...]:
        """Class names by label: the preset's, or the comma-separated list."""
        if self.class_names in CLASS_PRESETS:
            return CLASS_PRESETS[self.class_names]
        names = tuple(n.strip() for n in self.class_names.split(","))
        bad = [n for n in names if not _SAFE_NAME.match(n) or n == "background"]
        if bad or len(set(names)) != len(names):
            raise DataError(
                f"ScenesConfig.class_names={self.class_names!r}: use a preset ({', '.join(CLASS_PRESETS)}) or distinct "
                f"comma-separated names of letters, digits, '_', '-', '.' (not 'background'); bad: {bad or 'repeats'}"
            )
        return names


def split_sizes(config: ScenesConfig) -> tuple[int, int]:
    """Images in ``val`` and in ``train`` (the scoring subset of ``train_aug``)."""
    n_val = round(config.val_fraction * config.num_images)
    n_train_aug = config.num_images - n_val
    return n_val, min(n_train_aug, max(1, round(config.score_fraction * n_train_aug)))
