"""Lazy checkpoint readers: safetensors files (single or sharded with an index json) and torch
``.pth`` state dicts, each exposed as ``{key: LazyTensor}`` so tensors are read one at a time.

safetensors headers are parsed directly (8-byte little-endian length + JSON) so that bf16
tensors can be read without torch (as ``ml_dtypes.bfloat16``); each ``load()`` reads only that
tensor's byte range. ``.pth`` files go through ``torch.load(weights_only=True, mmap=True)``,
never unrestricted pickle.
"""
from __future__ import annotations

import glob
import json
import os
import struct
from typing import Dict, Mapping

import numpy as np

from gvc_jax.models.checkpoint import CheckpointError, LazyTensor

_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
INDEX_SUFFIX = ".safetensors.index.json"


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def read_safetensors_file(path: str) -> Dict[str, LazyTensor]:
    """Lazy tensors of one ``.safetensors`` file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file too short")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    base = 8 + n
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
        shape = tuple(int(s) for s in info["shape"])
        start, end = (int(o) for o in info["data_offsets"])
        npd = _np_dtype(dtype)
        if end - start != int(np.prod(shape)) * npd.itemsize or base + end > size:
            raise CheckpointError(f"{path}: tensor {key!r} has inconsistent offsets (truncated file?)")

        def read(path=path, off=base + start, npd=npd, shape=shape):
            # bf16 (ml_dtypes) has no byte-order variant; read it as little-endian uint16 bits.
            raw = np.dtype(f"<u{npd.itemsize}") if npd.itemsize > 1 else np.dtype(np.uint8)
            with open(path, "rb") as f:
                f.seek(off)
                a = np.fromfile(f, dtype=raw, count=int(np.prod(shape)))
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
        try:
            with open(path) as f:
                weight_map = json.load(f)["weight_map"]
        except FileNotFoundError:
            raise CheckpointError(f"index file {path} does not exist") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors index: {e}") from None
        shards = {}
        for shard in sorted(set(weight_map.values())):
            shards[shard] = read_safetensors_file(os.path.join(os.path.dirname(path), shard))
        out = {}
        for key, shard in weight_map.items():
            if key not in shards[shard]:
                raise CheckpointError(f"{path}: key {key!r} is not in shard {shard}")
            out[key] = shards[shard][key]
        extra = sorted({k for s in shards.values() for k in s} - set(weight_map))
        if extra:
            raise CheckpointError(f"{path}: shard tensors missing from the index: {extra[:5]}")
        return out
    return read_safetensors_file(path)


def read_torch(path: str) -> Dict[str, LazyTensor]:
    """Lazy tensors of a torch ``.pth``/``.pt`` state dict (``weights_only=True``, memory-mapped)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        import torch
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
        raise CheckpointError(f"{path} is not a readable torch state dict: {str(e).splitlines()[0]}") from None
    if isinstance(sd, Mapping) and set(sd) == {"state_dict"}:
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")

    def to_numpy(t):
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    out = {}
    for key, t in sd.items():
        dtype = str(t.dtype).replace("torch.", "")
        out[key] = LazyTensor(tuple(t.shape), dtype, lambda t=t: to_numpy(t), origin=f"{os.path.basename(path)}:{key}")
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
