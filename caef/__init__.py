"""caef: Class-specific Adversarial Erasing Framework (OC-CSE) for weakly supervised semantic segmentation."""

__version__ = "0.2.0"
