"""The generated dataset's recipe (:class:`SynthConfig`) and class names."""

from __future__ import annotations

from dataclasses import dataclass

FORMAT = "caef-synth"
FORMAT_VERSION = 1
MANIFEST = "caef_synth.json"
META = "caef_meta/objects.json"
VOC_SUBDIR = "VOCdevkit/VOC2012"
TEXTURES = ("stripes", "dots", "zigzag")


@dataclass(frozen=True)
class SynthConfig:
    num_images: int = 1000
    size: int = 128
    seed: int = 0
    num_classes: int = 6  # foreground classes
    max_objects: int = 3  # objects per image drawn uniformly from 1..max_objects
    val_fraction: float = 0.2
    score_fraction: float = 0.3  # fraction of train_aug also listed in `train` (the CAM scoring split)
    hidden_part_prob: float = 0.25  # probability that an object's head is not drawn
    ignore_border: int = 0  # width of a 255 band around object boundaries in the masks (0: none)
    body_contrast: float = 0.09  # mean amplitude of the body texture (image values in 0..1)
    noise: float = 0.03  # per-pixel Gaussian noise
    min_visible: float = 0.4  # an object must keep this fraction of its area visible, else it is dropped
    jpeg_quality: int = 90

    def validate(self) -> SynthConfig:
        ints = {
            "num_images": (2, None),
            "size": (32, None),
            "seed": (0, None),
            "num_classes": (1, 254),
            "max_objects": (1, None),
            "ignore_border": (0, None),
            "jpeg_quality": (1, 100),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= (high or value):
                raise ValueError(f"SynthConfig.{name} must be an integer in {low}..{high or 'inf'}, got {value!r}")
        floats = {
            "val_fraction": "(0, 1)",
            "score_fraction": "(0, 1]",
            "hidden_part_prob": "[0, 1]",
            "body_contrast": "[0, 1]",
            "noise": "[0, 1]",
            "min_visible": "[0, 1]",
        }
        for name, bounds in floats.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1  # False for NaN
            if not ok or (bounds[0] == "(" and value == 0) or (bounds[-1] == ")" and value == 1):
                raise ValueError(f"SynthConfig.{name} must be a number in {bounds}, got {value!r}")
        n_val, _ = _split_sizes(self)
        if n_val < 1 or n_val >= self.num_images:
            raise ValueError(
                f"SynthConfig.val_fraction={self.val_fraction} leaves {n_val} of {self.num_images} "
                "images for val; both val and train_aug need at least one image"
            )
        return self


def _split_sizes(config: SynthConfig) -> tuple[int, int]:
    n_val = round(config.val_fraction * config.num_images)
    n_train_aug = config.num_images - n_val
    return n_val, min(n_train_aug, max(1, round(config.score_fraction * n_train_aug)))


def class_names(num_classes: int) -> tuple[str, ...]:
    """Foreground class names: texture kind and body-texture orientation, e.g. ``stripes_0``, ``dots_90``."""
    n_orient = -(-num_classes // len(TEXTURES))
    return tuple(f"{TEXTURES[c % 3]}_{round(180 * (c // 3) / n_orient)}" for c in range(num_classes))


def describe(config: SynthConfig) -> str:
    n_val, n_train = _split_sizes(config)
    return (
        f"synthetic VOC tree: {config.num_images} images {config.size}x{config.size}, {config.num_classes} "
        f"classes, 1-{config.max_objects} objects/image, head hidden p={config.hidden_part_prob:g}, "
        f"train_aug {config.num_images - n_val} (train {n_train}) / val {n_val}, seed {config.seed}"
    )
