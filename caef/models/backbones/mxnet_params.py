"""MXNet ``.params`` (NDArray list) files read without MXNet, for the ImageNet ResNet-38.

The ImageNet weights of ResNet-38 exist only as ademxapp's MXNet file
``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``; MXNet no longer installs on current Pythons, so the format is
parsed here. Layout (``NDArray::Save``/``Load`` in apache/mxnet ``src/ndarray/ndarray.cc``), little-endian::

    uint64 0x112 (list magic), uint64 reserved,
    uint64 n, n x NDArray, uint64 m (0 or n), m x (uint64 length, utf-8 name)

An NDArray starts with a uint32 that selects its version:

* 0xF993FAC9 (V2) / 0xF993FACA (V3, numpy shape semantics): int32 storage type (only 0 = dense here),
  shape = int32 ndim + int64 dims; a V2 array with ndim 0 (V3: unknown shape) is "none" and ends there;
* 0xF993FAC8 (V1): shape = uint32 ndim + int64 dims;
* anything else (legacy V0, e.g. 2016 files): the word itself is ndim, followed by uint32 dims;

then context (int32 dev_type, int32 dev_id), int32 type flag and the raw elements.
"""

from __future__ import annotations

import re
import struct
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from caef.errors import CaefError

LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC = 0xF993FAC8
NDARRAY_V2_MAGIC = 0xF993FAC9
NDARRAY_V3_MAGIC = 0xF993FACA

# mshadow TypeFlag -> numpy dtype (little-endian); 12 (bfloat16) has no numpy dtype.
TYPE_FLAG_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("?"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_MAX_NDIM = 32  # a larger ndim means garbage, not a tensor


class _Reader:
    """Sequential reads that know their offset, so errors can say where the file went wrong."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle, self.path, self.offset = handle, path, 0

    def fail(self, message: str, offset: int | None = None) -> CaefError:
        at = self.offset if offset is None else offset
        return CaefError(f"{self.path}: {message} (at byte offset {at}); is this an MXNet .params file?")

    def read(self, size: int, what: str) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise self.fail(f"truncated MXNet file: needed {size} bytes for {what}, found {len(data)}")
        self.offset += size
        return data

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt), what))


def load_mxnet_params(path: str | PathLike) -> dict[str, np.ndarray]:
    """Arrays of an ``mx.nd.save`` file by name (``arg:``/``aux:`` prefixes kept; unnamed lists get "0", "1", ...)."""
    path = Path(path)
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        magic, _reserved = reader.unpack("QQ", "the file header")
        if magic != LIST_MAGIC:
            raise reader.fail(f"bad NDArray list magic 0x{magic:x}, expected 0x{LIST_MAGIC:x}", offset=0)
        (count,) = reader.unpack("Q", "the array count")
        arrays = [_read_ndarray(reader, index) for index in range(count)]
        (name_count,) = reader.unpack("Q", "the name count")
        if name_count not in (0, count):
            raise reader.fail(f"{name_count} names for {count} arrays", offset=reader.offset - 8)
        names = []
        for index in range(name_count):
            (length,) = reader.unpack("Q", f"the length of name {index}")
            raw = reader.read(length, f"name {index}")
            try:
                names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise reader.fail(f"name {index} is not utf-8", offset=reader.offset - length) from None
    if not names:
        names = [str(index) for index in range(count)]
    if len(set(names)) != len(names):
        raise CaefError(f"{path}: duplicate array names in MXNet file")
    return dict(zip(names, arrays))


def _read_ndarray(reader: _Reader, index: int) -> np.ndarray:
    start = reader.offset
    what = f"array {index}"
    (word,) = reader.unpack("I", f"the header of {what}")
    if word in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        (storage_type,) = reader.unpack("i", f"the storage type of {what}")
        if storage_type != 0:
            raise reader.fail(f"{what} has sparse storage type {storage_type}; only dense (0) is supported", start)
        shape = _read_int64_shape(reader, what, signed_ndim=True)
        if shape is None or (word == NDARRAY_V2_MAGIC and len(shape) == 0) or any(d < 0 for d in shape):
            return np.zeros((0,), np.float32)  # a "none" array: nothing else stored
    elif word == NDARRAY_V1_MAGIC:
        shape = _read_int64_shape(reader, what, signed_ndim=False)
        if not shape:
            return np.zeros((0,), np.float32)
    else:  # legacy V0: the word is ndim, dims are uint32
        if word > _MAX_NDIM:
            raise reader.fail(f"{what} has unknown header 0x{word:08x}", start)
        shape = reader.unpack(f"{word}I", f"the shape of {what}") if word else ()
        if not shape:
            return np.zeros((0,), np.float32)
    reader.unpack("ii", f"the context of {what}")
    (type_flag,) = reader.unpack("i", f"the type flag of {what}")
    if type_flag not in TYPE_FLAG_DTYPES:
        raise reader.fail(f"{what} has unsupported type flag {type_flag}", reader.offset - 4)
    dtype = TYPE_FLAG_DTYPES[type_flag]
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    data = bytearray(reader.read(size * dtype.itemsize, f"the {size} {dtype.name} elements of {what}"))
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_int64_shape(reader: _Reader, what: str, signed_ndim: bool) -> tuple[int, ...] | None:
    (ndim,) = reader.unpack("i" if signed_ndim else "I", f"the ndim of {what}")
    if ndim < 0:
        return None  # V3 unknown shape
    if ndim > _MAX_NDIM:
        raise reader.fail(f"{what} claims {ndim} dimensions", reader.offset - 4)
    return reader.unpack(f"{ndim}q", f"the shape of {what}") if ndim else ()


# -- ademxapp names <-> PSA names ---------------------------------------------------------------------
_BN_MX_TO_TORCH = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
# e.g. res4b3_branch2a_weight, bn5a_branch2b1_moving_var: stage digit, block letter (+ index), branch
_BRANCH_NAME = re.compile(r"^(res|bn)(\d)(a|[b-z]\d+)_(branch[0-9a-z]+)_(weight|gamma|beta|moving_mean|moving_var)$")
_FINAL_BN_NAME = re.compile(r"^bn7_(gamma|beta|moving_mean|moving_var)$")


def convert_mxnet_to_resnet38(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """ademxapp names -> PSA's (``res4b3_branch2a`` -> ``b4_3.conv_branch2a``).

    ``linear1000`` and unknown names are dropped.
    """
    state: dict[str, torch.Tensor] = {}
    for full_name, array in params.items():
        name = full_name.split(":", 1)[1] if full_name.startswith(("arg:", "aux:")) else full_name
        tensor = torch.from_numpy(np.array(array, copy=True))
        if name.startswith("conv1a_"):
            state["conv1a.weight"] = tensor
        elif match := _FINAL_BN_NAME.match(name):
            state[f"bn7.{_BN_MX_TO_TORCH[match.group(1)]}"] = tensor
        elif match := _BRANCH_NAME.match(name):
            kind, stage, block, branch, param = match.groups()
            block_name = f"b{stage}" if block == "a" else f"b{stage}_{block[1:]}"
            if kind == "res":
                state[f"{block_name}.conv_{branch}.weight"] = tensor
            else:
                state[f"{block_name}.bn_{branch}.{_BN_MX_TO_TORCH[param]}"] = tensor
    return state
