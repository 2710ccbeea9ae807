"""caef: Class-specific Adversarial Erasing Framework (OC-CSE) for weakly supervised semantic segmentation."""

__version__ = "0.6.0"

#: the Python API (caef/api.py), imported on first use so that `import caef` stays light
_API = ("cams", "load", "predict", "pseudo_label", "read_cams", "read_labels", "read_summary", "score_labels")


def __getattr__(name: str):
    if name in _API:
        from caef import api

        return getattr(api, name)
    raise AttributeError(f"module 'caef' has no attribute {name!r}")
