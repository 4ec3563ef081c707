"""Writing converted-model directories (the format ``gvc_jax.models.checkpoint`` reads).

``ModelWriter`` writes one component at a time (each saved, fingerprinted and released before the
next is converted, so peak memory is the largest component) into a temporary sibling directory
that ``commit`` renames onto the output; ``save_model`` writes a DiT + VAE model in one call.
Parameters are stored unrolled (``scan_layers=False``) and the manifest's fingerprint is the one
``load_model`` recomputes.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import numpy as np
from flax import nnx

from gvc_jax._memory import release_freed_memory
from gvc_jax.models.checkpoint import (
    ENCODERS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    CheckpointError,
    Fingerprint,
    flat_vars,
    path_str,
)
from gvc_jax.models.configs import ModelConfig


def param_count(*states) -> int:
    """Number of parameters (elements of every leaf) of the given States."""
    return sum(int(np.prod(v.shape)) for s in states for _, v in s.flat_state())


def unstack_layers(state):
    """Stacked ('blocks', *rest) [N, ...] leaves -> unrolled ('blocks', i, *rest)."""
    out = {}
    for p, v in flat_vars(state).items():
        if len(p) > 1 and p[0] == "blocks" and not isinstance(p[1], int):
            arr = v[...]
            for i in range(arr.shape[0]):
                out[("blocks", i) + p[1:]] = v.replace(arr[i])
        else:
            out[p] = v
    return nnx.State.from_flat_path(out)

# ----------------------------------------------------------------------------- save

def _config_dict(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _flat_arrays(state) -> dict:
    return {path_str(p): v[...] for p, v in state.flat_state()}


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def check_output_dir(out_dir: str, overwrite: bool = False) -> None:
    """Raise CheckpointError if ``out_dir`` exists and may not be replaced."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"output path {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and not _is_empty_dir(out_dir) and not overwrite:
        raise CheckpointError(f"output directory {out_dir} exists and is not empty (use overwrite)")


class ModelWriter:
    """Writes a converted model directory one component at a time (each saved, fingerprinted and
    released before the next is converted, so peak memory is the largest component), into a
    temporary sibling directory renamed to ``out_dir`` by ``commit``; ``abort`` (or an exception
    inside ``with``) removes it and leaves ``out_dir`` untouched.

    Components in order: ``dit``, ``vae``, optionally ``image_encoder`` (these make the stream
    fingerprint), then ``text_encoder``; ``add_file`` for ``tokenizer.json`` / ``context.npy``.
    """

    def __init__(self, out_dir: str, *, overwrite: bool = False, image_encoder: bool = False):
        self.out_dir = os.path.abspath(out_dir)
        check_output_dir(self.out_dir, overwrite)
        parent = os.path.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.tmp-", dir=parent)
        self._fp = Fingerprint(3 if image_encoder else 2)
        self._expect_image = image_encoder
        self.params: dict[str, int] = {}  # component -> parameter count
        self.encoders: dict[str, dict] = {}
        self.extra: dict[str, Any] = {}

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False

    def _save(self, name: str, state) -> None:
        import orbax.checkpoint as ocp  # heavy (tensorstore): imported only when a model is written

        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(os.path.join(self.tmp, name), _flat_arrays(state))
            ckptr.wait_until_finished()

    def add(self, name: str, state, config: Optional[dict] = None) -> None:
        """Write component ``name``: a parameter State, or an iterator of States of consecutive
        leaves (``convert_state_parts``), each saved as ``name/part-NNN`` and released in turn."""
        order = ["dit", "vae"] + (["image_encoder"] if self._expect_image else []) + ["text_encoder"]
        done = list(self.params)
        if name not in order or (name != "text_encoder" and order[len(done)] != name):
            raise CheckpointError(f"model component {name!r} out of order (expected {order[len(done)]!r})")
        own = Fingerprint(1)
        own.begin_state()
        if name != "text_encoder":
            self._fp.begin_state()
        whole = isinstance(state, Mapping)  # an nnx.State; else an iterator of parts
        count = n = 0
        for part in ([state] if whole else state):
            self._save(name if whole else os.path.join(name, f"part-{n:03d}"), part)
            count += param_count(part)
            own.add_leaves(part)
            if name != "text_encoder":
                self._fp.add_leaves(part)
            n += 1
            del part
            gc.collect()
            release_freed_memory()
        if not whole:
            self.extra.setdefault("parts", {})[name] = n
        self.params[name] = count
        if name in ENCODERS:
            self.encoders[name] = {"config": config or {}, "params": count, "fingerprint": own.hexdigest()}

    def add_file(self, name: str, data: bytes) -> None:
        with open(os.path.join(self.tmp, name), "wb") as f:
            f.write(data)
        if name == "context.npy":
            self.extra["context_sha256"] = hashlib.sha256(data).hexdigest()

    def commit(self, model_config: ModelConfig, source: Optional[dict] = None) -> str:
        expected = ("dit", "vae") + (("image_encoder",) if self._expect_image else ())
        missing = [n for n in expected if n not in self.params]
        if missing:
            raise CheckpointError(f"model directory incomplete: {', '.join(missing)} not written")
        fp = self._fp.hexdigest()
        dit_cfg = model_config.dit.replace(scan_layers=False, remat=False)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": model_config.name,
            "variant": dit_cfg.variant,
            "default_shift": model_config.default_shift,
            "native_size": None if model_config.native_size is None else list(model_config.native_size),
            "dit": _config_dict(dit_cfg),
            "vae": _config_dict(model_config.vae),
            "dtype": {"dit": dit_cfg.param_dtype, "vae": model_config.vae.param_dtype},
            "params": {"dit": self.params["dit"], "vae": self.params["vae"]},
            "fingerprint": fp,
            "source": source or {},
            **self.extra,
        }
        if self.encoders:
            manifest["encoders"] = dict(sorted(self.encoders.items()))
        try:
            with open(os.path.join(self.tmp, MANIFEST), "w") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
                f.write("\n")
            _replace_dir(self.tmp, self.out_dir)
        except BaseException:
            self.abort()
            raise
        return fp

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def save_model(out_dir: str, model_config: ModelConfig, dit_state, vae_state, *,
               source: Optional[dict] = None, overwrite: bool = False) -> str:
    """Write a converted model directory (DiT + VAE) atomically; returns its fingerprint.

    ``dit_state`` / ``vae_state`` are parameter States for ``model_config`` (a stacked DiT state
    when ``model_config.dit.scan_layers``; it is stored unrolled). ``ModelWriter`` writes models
    with encoders.
    """
    if model_config.dit.scan_layers:
        dit_state = unstack_layers(dit_state)
    with ModelWriter(out_dir, overwrite=overwrite) as w:
        w.add("dit", dit_state)
        w.add("vae", vae_state)
        return w.commit(model_config, source)


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` is moved aside first, then removed."""
    if os.path.isdir(out_dir) and not _is_empty_dir(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
        os.rename(out_dir, os.path.join(old, "x"))
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
