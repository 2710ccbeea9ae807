"""The pipeline's ``precision`` key: which Lightning precision its network stages train and infer in.

``auto`` is for the CPU recipes (the demo, the scenes): bf16 autocast (``bf16-mixed``) where the CPU multiplies
bf16 in hardware (Intel AMX tiles: Sapphire Rapids and later), where it made the demo's training steps 1.55x
faster; ``32-true`` elsewhere, where bf16 on the CPU is emulated or no faster. The pipeline resolves it once, on the
machine that runs the stages, and passes the result as ``--trainer.precision``: it is part of each stage's argv,
so of its fingerprint and its saved config, and ``summary.json`` records it per stage. A run resumed on a machine
that resolves it otherwise reruns those stages instead of mixing precisions silently.
"""

from __future__ import annotations

from caef.errors import CaefError

#: Lightning precisions a pipeline may name, plus ``auto``
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def check_precision(value: object, where: str = "precision") -> None:
    if value is not None and value not in PRECISIONS:
        raise CaefError(f"{where} must be one of {', '.join(PRECISIONS)} (or unset), got {value!r}")


def cpu_multiplies_bf16() -> bool:
    """True where the CPU has AMX bf16 tiles (oneDNN then runs bf16 convolutions natively)."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        return bool(probe())
    try:  # older torch: the kernel's CPU flags
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return "amx_bf16" in info.read().split()
    except OSError:
        return False


def resolve_precision(value: str | None) -> str | None:
    """``auto`` -> ``bf16-mixed`` or ``32-true`` on this machine; anything else as given (None: the stage configs
    decide)."""
    check_precision(value)
    if value == "auto":
        return "bf16-mixed" if cpu_multiplies_bf16() else "32-true"
    return value
