"""Lazy checkpoint readers: safetensors files (single or sharded with an index json) and torch
``.pth`` state dicts, each exposed as ``{key: LazyTensor}`` so tensors are read one at a time.

safetensors headers are parsed directly (8-byte little-endian length + JSON) so that bf16
tensors can be read without torch (as ``ml_dtypes.bfloat16``); each ``load()`` reads only that
tensor's byte range. Every input is treated as hostile: only regular files are opened (not FIFOs
or devices, also behind symlinks), the header length is bounded (100 MB and the file size) and the
header is checked against the safetensors schema (``parse_safetensors_header``) before any tensor
is read; an index json is a bounded regular file whose shards are plain file names next to it.
Each problem is one ``CheckpointError`` line naming the file and the key. ``.pth`` files go through
``torch.load(weights_only=True, mmap=True)``, never unrestricted pickle.

``in_memory_source`` makes the same ``{key: LazyTensor}`` of a state dict already in memory, and
``read_json_object`` reads a config json with the same care.
"""
from __future__ import annotations

import functools
import glob
import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Tuple

import ml_dtypes
import numpy as np

from gvc_jax.models.checkpoint import (
    MAX_MANIFEST_BYTES,
    CheckpointError,
    check_regular_file,
    first_line,
    open_regular,
    read_regular,
)

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class LazyTensor:
    """A tensor not read yet: ``shape`` and numpy ``dtype`` name known, ``load()`` reads it."""

    shape: Tuple[int, ...]
    dtype: str
    read: Callable[[], np.ndarray]
    origin: str = ""

    def load(self) -> np.ndarray:
        a = self.read()
        if tuple(a.shape) != tuple(self.shape):
            raise CheckpointError(f"{self.origin}: tensor has shape {tuple(a.shape)}, header says {self.shape}")
        return a


def in_memory_source(tensors: Mapping[str, np.ndarray]) -> dict:
    """A state dict already in memory (numpy arrays, torch layout) as a ``convert_state`` source."""
    return {k: LazyTensor(tuple(np.shape(v)), str(np.asarray(v).dtype), functools.partial(np.asarray, v), origin=k)
            for k, v in tensors.items()}


def read_json_object(path: str, what: str = "JSON file", max_bytes: int = MAX_MANIFEST_BYTES) -> dict:
    """A JSON object from ``path`` (``read_regular``); CheckpointError for anything else."""
    data = read_regular(path, what, max_bytes)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{what} {path} is not valid JSON: {first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} is not a JSON object")
    return obj


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
MAX_INDEX_BYTES = 64 << 20      # a *.safetensors.index.json (Wan 14B's is about 100 kB)
MAX_NDIM = 16


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_safetensors_header(header, data_size: int, path: str) -> Dict[str, tuple]:
    """Validate a parsed safetensors header against the spec -> {key: (dtype name, shape, begin, end)}
    (offsets relative to the data section of ``data_size`` bytes).

    The header must be a JSON object; ``__metadata__`` is optional and maps strings to strings;
    every other entry is an object with ``dtype`` (a known name), ``shape`` (a list of at most
    ``MAX_NDIM`` non-negative integers) and ``data_offsets`` ([begin, end] integers with
    0 <= begin <= end <= data_size and end - begin = prod(shape) * itemsize). The first problem is
    one CheckpointError line naming ``path`` and the key."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object (got {type(header).__name__})")
    out = {}
    for key, info in header.items():
        where = f"{path}: tensor {_show(key)}"
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in info.items()):
                raise CheckpointError(f"{path}: __metadata__ must be an object of strings, got {_show(info)}")
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{where} is not an object (got {_show(info)})")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in info:
                raise CheckpointError(f"{where} has no {field!r}")
        st_dtype = info["dtype"]
        dtype = _ST_DTYPES.get(st_dtype) if isinstance(st_dtype, str) else None
        if dtype is None:
            raise CheckpointError(f"{where} has unsupported dtype {_show(st_dtype)} "
                                  f"(known: {', '.join(_ST_DTYPES)})")
        shape = info["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of at most {MAX_NDIM} non-negative integers, "
                                  f"got {_show(shape)}")
        offsets = info["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise CheckpointError(f"{where}: data_offsets must be [begin, end] integers, got {_show(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] are outside the {data_size:,} data bytes "
                                  "(truncated file?)")
        nbytes = math.prod(shape) * _np_dtype(dtype).itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{where}: data_offsets span {end - begin:,} bytes, shape {tuple(shape)} {st_dtype} "
                                  f"needs {nbytes:,} bytes")
        out[key] = (dtype, tuple(shape), begin, end)
    return out


def read_safetensors_file(path: str) -> Dict[str, LazyTensor]:
    """Lazy tensors of one ``.safetensors`` file (a regular file; header checked by
    ``parse_safetensors_header`` before any tensor is read)."""
    with open_regular(path, "checkpoint file") as (f, size):
        try:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(
                    f"{path} is not a safetensors file: {size} bytes, shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path} is not a safetensors file: header length {n:,} is more than "
                                      f"{min(MAX_HEADER_BYTES, size - 8):,} (the limit, or what the file holds)")
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    if len(raw) != n:
        raise CheckpointError(f"{path} changed while being read")
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON "
                              f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    base = 8 + n
    out = {}
    for key, (dtype, shape, begin, _end) in parse_safetensors_header(header, size - base, path).items():
        npd = _np_dtype(dtype)
        count = math.prod(shape)

        def read(path=path, off=base + begin, npd=npd, shape=shape, count=count):
            # bf16 (ml_dtypes) has no byte-order variant; read it as little-endian uint16 bits.
            raw = np.dtype(f"<u{npd.itemsize}") if npd.itemsize > 1 else np.dtype(np.uint8)
            with open_regular(path, "checkpoint file") as (f, size):
                if off + count * raw.itemsize > size:
                    raise CheckpointError(f"{path} was truncated after its header was read")
                f.seek(off)
                a = np.fromfile(f, dtype=raw, count=count)
            if a.size != count:
                raise CheckpointError(f"{path} was truncated after its header was read")
            return a.astype(raw.newbyteorder("=")).view(npd).reshape(shape)

        out[key] = LazyTensor(shape, dtype, read, origin=f"{os.path.basename(path)}:{key}")
    return out


def read_safetensors(path: str) -> Dict[str, LazyTensor]:
    """A ``.safetensors`` file, an ``*.safetensors.index.json``, or a directory holding one index
    json (sharded) or exactly one ``.safetensors`` file."""
    if os.path.isdir(path):
        indexes = sorted(glob.glob(os.path.join(path, "*" + INDEX_SUFFIX)))
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if len(indexes) > 1:
            raise CheckpointError(f"{path} holds several index files: {[os.path.basename(p) for p in indexes]}")
        if indexes:
            return read_safetensors(indexes[0])
        if len(files) != 1:
            raise CheckpointError(f"{path} must hold one .safetensors file or an index json, found {len(files)} files")
        return read_safetensors_file(files[0])
    if path.endswith(INDEX_SUFFIX):
        index = read_json_object(path, "index file", MAX_INDEX_BYTES)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{path} is not a valid safetensors index: 'weight_map' is not an object")
        for key, shard in weight_map.items():
            if (not isinstance(shard, str) or shard in ("", ".", "..") or os.path.basename(shard) != shard
                    or "/" in shard or "\\" in shard):
                raise CheckpointError(f"{path}: key {_show(key)} maps to {_show(shard)}, not a file name in the "
                                      "index's directory")
        shards = {}
        for shard in sorted(set(weight_map.values())):
            shards[shard] = read_safetensors_file(os.path.join(os.path.dirname(path), shard))
        out = {}
        for key, shard in weight_map.items():
            if key not in shards[shard]:
                raise CheckpointError(f"{path}: key {_show(key)} is not in shard {shard}")
            out[key] = shards[shard][key]
        extra = sorted({k for s in shards.values() for k in s} - set(weight_map))
        if extra:
            raise CheckpointError(f"{path}: shard tensors missing from the index: {extra[:5]}")
        return out
    return read_safetensors_file(path)


def read_torch(path: str) -> Dict[str, LazyTensor]:
    """Lazy tensors of a torch ``.pth``/``.pt`` state dict (``weights_only=True``, memory-mapped);
    only a regular file is opened (``check_regular_file``: not a FIFO or a device)."""
    check_regular_file(path, "checkpoint file")
    try:
        import torch  # optional and heavy: only .pth sources need it
    except ImportError:
        raise CheckpointError("reading a .pth checkpoint needs torch (pip install torch==2.13.0, CPU build)") from None
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"{path} is not a readable torch state dict: {msg}") from None
    if isinstance(sd, Mapping) and set(sd) == {"state_dict"}:
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")

    def to_numpy(t):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    out = {}
    for key, t in sd.items():
        dtype = str(t.dtype).replace("torch.", "")
        out[key] = LazyTensor(tuple(t.shape), dtype, functools.partial(to_numpy, t),
                              origin=f"{os.path.basename(path)}:{key}")
    return out


def read_checkpoint(path: str) -> Dict[str, LazyTensor]:
    """Dispatch on the file type: safetensors (file, index, directory) or torch ``.pth``/``.pt``/``.bin``."""
    if os.path.isdir(path) or path.endswith(".safetensors") or path.endswith(INDEX_SUFFIX):
        return read_safetensors(path)
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return read_torch(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"unknown checkpoint type {path} (expected .safetensors, an index json, a directory or .pth)")


def renamed(source: Mapping[str, LazyTensor], mapping: Mapping[str, str]) -> Dict[str, LazyTensor]:
    """``{new_key: source[old_key]}`` for ``mapping`` = {new_key: old_key}."""
    return {new: source[old] for new, old in mapping.items()}
