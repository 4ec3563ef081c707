"""Text conditioning for a prompt: the model's umT5 embedding of the text, cached on disk.

``prompt_context(model, prompt)`` -> [text_len, text_dim] float32 rows (zeros past the prompt's
tokens, as Wan pads them). The umT5 encoder and tokenizer of the model directory are loaded on the
first prompt of a process (a model without them raises ``TextEncoderError``).

Embeddings are kept in ``$GVC_JAX_CACHE`` (default ``~/.cache/gvc-jax``) under
``text/<key>.emb``, ``key`` = sha256 of the text encoder's fingerprint, its compute dtype and the
prompt. An entry is verified, not trusted::

    8 s  magic "GVCTEXT1"     32 B  key (binds the entry to its prompt, encoder and dtype)
    u32  rows   u32 dim       32 B  sha256 of the float32 bytes       then rows * dim float32 (LE)

It is read only if it is a regular file (``lstat`` first; opened with ``O_NOFOLLOW | O_NONBLOCK``,
so a symlink, FIFO or device is never read and nothing blocks) of exactly the size the model's
``[text_len, text_dim]`` implies, whose magic, key, shape and digest all match: reading costs at
most one entry's bytes, whatever is on disk. Anything else is recomputed with a one-line
``warning:`` on stderr naming the file; a bad regular file is then replaced atomically (a temporary
file in the same directory + ``os.replace``, which replaces a directory entry and never writes
through a symlink), while a symlink, directory, FIFO or device in the entry's place is left alone
and the embedding is not cached. The digest catches corruption, truncation and mix-ups (another
prompt's entry copied over); it is not a signature against someone who can write the cache.
An unwritable cache only costs the re-encoding.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import sys
import tempfile

import numpy as np

from gvc_jax.models.checkpoint import load_text_encoder
from gvc_jax.models.umt5 import text_context

CACHE_ENV = "GVC_JAX_CACHE"
ENTRY_SUFFIX = ".emb"
MAGIC = b"GVCTEXT1"
_HEAD = struct.Struct("<8s32sII32s")  # magic, key, rows, dim, sha256 of the float32 bytes
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


def entry_path(model, prompt: str) -> str:
    """Where ``prompt``'s embedding under ``model``'s text encoder is cached."""
    return os.path.join(cache_dir(), cache_key(model, prompt) + ENTRY_SUFFIX)


def _check_encoder(model) -> None:
    if not model.text_encoder or not model.path:
        raise TextEncoderError(f"model {model.name} has no text encoder, so it cannot take a prompt "
                               "(convert a full release with python -m weights_convert release ...)")


def _encoder(model):
    _check_encoder(model)
    if model.path not in _LOADED:
        _LOADED[model.path] = load_text_encoder(model.path, model.text_encoder)
    return _LOADED[model.path]


# ----------------------------------------------------------------------------------- entries


def encode_entry(key: str, rows: np.ndarray) -> bytes:
    """The cache file of float32 ``rows`` [rows, dim] under ``key`` (64 hex digits)."""
    data = np.ascontiguousarray(rows, "<f4").tobytes()
    return _HEAD.pack(MAGIC, bytes.fromhex(key), rows.shape[0], rows.shape[1], hashlib.sha256(data).digest()) + data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


class _BadEntry(Exception):
    """Why a cache entry was not used; ``replace``: whether a new entry may take its place."""

    def __init__(self, why: str, replace: bool = True) -> None:
        super().__init__(why)
        self.replace = replace


def _read_exact(fd: int, n: int) -> bytes:
    """Exactly ``n`` bytes from ``fd`` (fewer only at end of file); never more than ``n``."""
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_entry(path: str, key: str, shape) -> np.ndarray | None:
    """The verified rows of the entry at ``path``; None if there is none; ``_BadEntry`` if unusable."""
    rows, dim = shape
    size = _HEAD.size + 4 * rows * dim
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:  # e.g. "text" is not a directory, or may not be searched
        raise _BadEntry(f"cannot be examined ({e.strerror or e})", replace=False) from None
    if not stat.S_ISREG(st.st_mode):
        raise _BadEntry(f"is a {_kind(st.st_mode)}, not a regular file", replace=False)
    if st.st_size != size:
        raise _BadEntry(f"has {st.st_size} bytes, not the {size} of a [{rows}, {dim}] entry")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
        | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as e:  # ELOOP: a symlink put in its place after the lstat
        raise _BadEntry(f"cannot be opened ({e.strerror or e})", replace=e.errno != errno.ELOOP) from None
    try:
        st = os.fstat(fd)  # the file actually opened, should it have been swapped since the lstat
        if not stat.S_ISREG(st.st_mode):
            raise _BadEntry(f"is a {_kind(st.st_mode)}, not a regular file", replace=False)
        if st.st_size != size:
            raise _BadEntry(f"has {st.st_size} bytes, not the {size} of a [{rows}, {dim}] entry")
        head = _read_exact(fd, _HEAD.size)
        if len(head) < _HEAD.size:
            raise _BadEntry("is truncated")
        magic, stored_key, n_rows, n_dim, digest = _HEAD.unpack(head)
        if magic != MAGIC:
            raise _BadEntry("is not a gvc-jax prompt embedding (bad magic)")
        if stored_key != bytes.fromhex(key):
            raise _BadEntry("belongs to another prompt, text encoder or dtype")
        if (n_rows, n_dim) != (rows, dim):
            raise _BadEntry(f"holds [{n_rows}, {n_dim}] rows, expected [{rows}, {dim}]")
        data = _read_exact(fd, size - _HEAD.size)
    except OSError as e:
        raise _BadEntry(f"cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(data) != size - _HEAD.size:
        raise _BadEntry("is truncated")
    if hashlib.sha256(data).digest() != digest:
        raise _BadEntry("does not match its digest (altered or corrupt)")
    return np.frombuffer(data, "<f4").reshape(shape).astype(np.float32)


def _write_entry(path: str, key: str, rows: np.ndarray) -> None:
    """Atomically put ``rows`` at ``path``: a temporary file in the same directory, then
    ``os.replace``; never over anything but a regular file; a warning if it cannot be done."""
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):  # appeared since it was read: leave it
            print(f"warning: prompt cache entry {path} is a {_kind(st.st_mode)}, not a regular file; "
                  "the prompt embedding is not cached", file=sys.stderr)
            return
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ENTRY_SUFFIX, dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(encode_entry(key, rows))
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        print(f"warning: cannot cache the prompt embedding in {folder}: {e}", file=sys.stderr)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def prompt_context(model, prompt: str) -> np.ndarray:
    """The text rows [text_len, text_dim] (float32) the DiT reads for ``prompt``."""
    _check_encoder(model)
    cfg = model.config.dit
    shape = (cfg.text_len, cfg.text_dim)
    key = cache_key(model, prompt)
    path = os.path.join(cache_dir(), key + ENTRY_SUFFIX)
    replace = True
    try:
        rows = _read_entry(path, key, shape)
    except _BadEntry as bad:
        rows, replace = None, bad.replace
        then = "recomputing it" if replace else "recomputing it, not caching it"
        print(f"warning: prompt cache entry {path} {bad}; {then}", file=sys.stderr)
    if rows is not None:
        return rows
    encoder, tokenizer = _encoder(model)
    rows = np.asarray(text_context(encoder, tokenizer, prompt), np.float32)
    if rows.shape != shape:
        raise TextEncoderError(f"the text encoder gives rows {rows.shape}, the DiT reads {shape}")
    if replace:
        _write_entry(path, key, rows)
    return rows
