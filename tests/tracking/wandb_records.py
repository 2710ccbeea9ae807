"""Read offline W&B runs back from their ``.wandb`` files with wandb's own record schema.

A ``.wandb`` file is a LevelDB-style log (what ``wandb sync`` uploads): a 7-byte header (``:W&B``, magic 0xBEE1,
version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32C, length, type: full / first / middle /
last); every complete payload is one ``wandb.proto.wandb_internal_pb2.Record``. The reader here is independent of
caef, so a test sees exactly what W&B would upload.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    path: Path
    id: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), path
    pos, payload = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # trailer padding of a block
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if (kind == 0 and length == 0) or pos + length > len(data):  # the end, or a chunk still being written
            break
        payload += data[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def _set(target: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    node = target
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = json.loads(item.value_json)


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun(path)
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.id, run.group, run.job_type = record.run.run_id, record.run.run_group, record.run.job_type
            for item in record.run.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run.history.append(row)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(root: Path, timeout_s: float = 30.0) -> list[OfflineRun]:
    """Every offline run under ``root`` (each ``.wandb`` file once: ``latest-run`` is a link to one of them).

    W&B's service writes the file after ``finish()`` returns (and after the process that logged exits), so this
    waits up to ``timeout_s`` for every run's exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [read_run(p) for p in sorted({p.resolve() for p in root.rglob("*.wandb")})]
        if all(run.exit_code is not None for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)
