"""Text conditioning for a prompt: the model's umT5 embedding of the text, cached on disk.

``prompt_context(model, prompt)`` -> [text_len, text_dim] float32 rows (zeros past the prompt's
tokens, as Wan pads them). The umT5 encoder and tokenizer of the model directory are loaded on the
first prompt of a process (a model without them raises ``TextEncoderError``). Embeddings are kept
in ``$GVC_JAX_CACHE`` (default ``~/.cache/gvc-jax``) under ``text/<sha256>.npy``, keyed by the text
encoder's fingerprint, its compute dtype and the prompt, and written atomically; an unwritable
cache only costs the re-encoding.
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile

import numpy as np

CACHE_ENV = "GVC_JAX_CACHE"
_LOADED: dict = {}  # model directory -> (encoder, tokenizer)


class TextEncoderError(ValueError):
    """A prompt was given to a model without a text encoder."""


def cache_dir() -> str:
    return os.path.join(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "gvc-jax"),
                        "text")


def cache_key(model, prompt: str) -> str:
    entry = model.text_encoder or {}
    dtype = (entry.get("config") or {}).get("dtype", "float32")
    return hashlib.sha256(f"{entry.get('fingerprint')}\0{dtype}\0{prompt}".encode("utf-8")).hexdigest()


def _encoder(model):
    if not model.text_encoder or not model.path:
        raise TextEncoderError(f"model {model.name} has no text encoder, so it cannot take a prompt "
                               "(convert a full release with python -m weights_convert release ...)")
    if model.path not in _LOADED:
        from gvc_jax.models.checkpoint import load_text_encoder

        _LOADED[model.path] = load_text_encoder(model.path, model.text_encoder)
    return _LOADED[model.path]


def _read_cache(path: str, shape) -> np.ndarray | None:
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return rows if rows.dtype == np.float32 and rows.shape == tuple(shape) else None


def _write_cache(path: str, rows: np.ndarray) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            np.save(f, rows)
        os.replace(tmp, path)
    except OSError as e:
        print(f"warning: cannot cache the prompt embedding in {os.path.dirname(path)}: {e}", file=sys.stderr)


def prompt_context(model, prompt: str) -> np.ndarray:
    """The text rows [text_len, text_dim] (float32) the DiT reads for ``prompt``."""
    cfg = model.config.dit
    shape = (cfg.text_len, cfg.text_dim)
    path = os.path.join(cache_dir(), cache_key(model, prompt) + ".npy")
    rows = _read_cache(path, shape)
    if rows is None:
        from gvc_jax.models.umt5 import text_context

        encoder, tokenizer = _encoder(model)
        rows = np.asarray(text_context(encoder, tokenizer, prompt), np.float32)
        if rows.shape != shape:
            raise TextEncoderError(f"the text encoder gives rows {rows.shape}, the DiT reads {shape}")
        _write_cache(path, rows)
    return rows
