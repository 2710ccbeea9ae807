"""W&B never needs a login or a network: the mode every ``caef`` command runs W&B in."""

from __future__ import annotations

import netrc
import os
import sys


def configure_wandb_mode(environ: dict[str, str] | None = None) -> str:
    """W&B never stops a run: without an API key (env or ~/.netrc), or with one but no route to the W&B server
    (a 3 s TCP probe of ``WANDB_BASE_URL``), it runs offline (`wandb sync` uploads later). An explicit
    ``WANDB_MODE`` always wins."""
    environ = os.environ if environ is None else environ
    if "WANDB_MODE" in environ:
        return environ["WANDB_MODE"]
    if not environ.get("WANDB_API_KEY") and not _netrc_has_wandb():
        environ["WANDB_MODE"] = "offline"
    elif not _wandb_reachable(environ):
        print("caef: W&B server unreachable: logging offline (upload later with `wandb sync`)", file=sys.stderr)
        environ["WANDB_MODE"] = "offline"
    return environ.get("WANDB_MODE", "online")


def _wandb_reachable(environ: dict[str, str], timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def _netrc_has_wandb() -> bool:
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
