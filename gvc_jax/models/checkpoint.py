"""Converted-model directories: the format, hostile-file checks, fingerprint and load.

A converted model is a directory::

    OUT/gvc_model.json   manifest: format, name, DiT and VAE config dicts, dtype, fingerprint, source
    OUT/dit/             orbax checkpoint of the DiT parameters (flat dict, '/'-joined paths)
    OUT/vae/             orbax checkpoint of the VAE parameters
    OUT/image_encoder/   orbax checkpoint of the CLIP vision tower (models with an image branch)
    OUT/text_encoder/    orbax checkpoint of the umT5 encoder (optional: for --prompt)
    OUT/tokenizer.json   the umT5 tokenizer (with text_encoder/)
    OUT/context.npy      the empty prompt's umT5 rows [n, text_dim] (computed at conversion)

The encoders are listed in the manifest's ``encoders`` (config, parameter count, fingerprint). The
stream fingerprint covers every weight the codec runs on each GOP: DiT, VAE and, when present, the
CLIP tower (whose tokens of the decoded anchors condition I2V / FLF2V GOPs). The text encoder runs
only for a prompt, and ``context.npy`` is checked against the sha256 in the manifest.

Parameters are stored in the unrolled layout (``scan_layers=False``); ``load_model`` can restack
them. The fingerprint is a sha256 over the canonical parameter bytes (sorted paths, dtype, shape,
little-endian data) and is recomputed on every load.

Every file of a model directory is treated as hostile (``load_model``): the manifest is read only
if it is a regular file of at most ``MAX_MANIFEST_BYTES``; every config field is type- and
range-checked (``configs.DIT_LIMITS`` ...) and the part counts are bounded by the parameter count
before anything is built; every entry of an orbax directory must be a regular file or directory
(no FIFOs, devices or sockets, also behind symlinks); ``context.npy`` must be a regular file whose
``.npy`` header declares float32 ``[n <= text_len, text_dim]`` and whose size is exactly that, and
``tokenizer.json`` a regular file of bounded size. Each problem is one ``CheckpointError`` line
naming the file or field and the directory, raised before any large allocation.

This module holds only what reading a model directory needs. Writing one, and the table-driven
torch -> Flax conversion of source checkpoints, are the converter's (``weights_convert.model_writer``,
``weights_convert.to_flax``, ``weights_convert.sources``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Optional, Sequence, Tuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from gvc_jax.models import dit as dit_lib
from gvc_jax.models import vae as vae_lib
from gvc_jax.models.clip import CLIPVisionConfig, CLIPVisionTower
from gvc_jax.models.configs import DiTConfig, ModelConfig, VAEConfig, check_int, check_real, check_str
from gvc_jax.models.tokenizer import TextTokenizer
from gvc_jax.models.umt5 import UMT5Config, UMT5Encoder

FORMAT = "gvc-jax-model"
FORMAT_VERSION = 1
MANIFEST = "gvc_model.json"
_MAX_LINES = 40
MAX_MANIFEST_BYTES = 16 << 20     # gvc_model.json (a real one is a few kB)
MAX_TOKENIZER_BYTES = 256 << 20   # tokenizer.json (umT5-XXL's is about 16 MB)
MAX_CHECKPOINT_ENTRIES = 100_000  # files + directories under one orbax checkpoint directory
MAX_PARTS = 100_000               # parts of one component (also at most its number of tensors)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint or converted model does not match what was expected (user-fixable)."""


def raise_problems(problems: Sequence[str], what: str) -> None:
    """Raise one CheckpointError: one line when there is a single problem, else a header + lines."""
    if not problems:
        return
    if len(problems) == 1:
        raise CheckpointError(f"{what}: {problems[0]}")
    shown = list(problems[:_MAX_LINES])
    if len(problems) > _MAX_LINES:
        shown.append(f"... and {len(problems) - _MAX_LINES} more")
    raise CheckpointError(f"{what}: {len(problems)} problems\n  " + "\n  ".join(shown))


# ----------------------------------------------------------------------------- hostile files

def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check_stat(st: os.stat_result, path: str, what: str, max_bytes: Optional[int]) -> int:
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise CheckpointError(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} it may have")
    return st.st_size


def check_regular_file(path: str, what: str = "file", max_bytes: Optional[int] = None) -> int:
    """The size of ``path``; CheckpointError (one line) unless it is, after following symlinks, a
    regular file (not a FIFO, device, socket or directory) of at most ``max_bytes``. Opens nothing."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    return _check_stat(st, path, what, max_bytes)


@contextmanager
def open_regular(path: str, what: str = "file", max_bytes: Optional[int] = None) -> Iterator[Tuple[BinaryIO, int]]:
    """``with open_regular(path) as (f, size)``: ``path`` opened for binary reading only once it is
    known to be a regular file of at most ``max_bytes`` (``check_regular_file``, before opening; then
    again on the open descriptor, which is opened non-blocking so a FIFO swapped in meanwhile cannot
    block). CheckpointError otherwise."""
    check_regular_file(path, what, max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    try:
        size = _check_stat(os.fstat(fd), path, what, max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f, size


def read_regular(path: str, what: str = "file", max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes`` (``open_regular``)."""
    with open_regular(path, what, max_bytes) as (f, _):
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise CheckpointError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise CheckpointError(f"{what} {path} grew past {max_bytes:,} bytes while being read")
    return data


def check_tree(root: str, what: str, max_entries: int = MAX_CHECKPOINT_ENTRIES) -> None:
    """Every entry under directory ``root`` (symlinks followed) is a regular file or a directory,
    and there are at most ``max_entries``: a FIFO, a device or a socket (which a reader could block
    on or read without end), a runaway tree or a symlink loop is one CheckpointError line, before
    anything reads."""
    n = 0
    problems = []

    def onerror(e):
        problems.append(f"{what}: cannot list {e.filename}: {e.strerror or e}")

    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            raise CheckpointError(f"{what}: cannot list {dirpath}: {e.strerror or e}") from None
        if (st.st_dev, st.st_ino) in seen:
            raise CheckpointError(f"{what}: {dirpath} is a symlink loop (a directory seen twice)")
        seen.add((st.st_dev, st.st_ino))
        n += len(dirnames) + len(filenames)
        if n > max_entries:
            raise CheckpointError(f"{what}: {root} holds more than {max_entries:,} entries (symlink loop?)")
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                mode = os.stat(p).st_mode
            except OSError as e:
                raise CheckpointError(f"{what}: {p} cannot be read: {e.strerror or e} (dangling symlink?)") from None
            if not stat.S_ISREG(mode):
                raise CheckpointError(f"{what}: {p} is {_file_kind(mode)}, not a regular file")
        if problems:
            raise CheckpointError(problems[0])
    if problems:
        raise CheckpointError(problems[0])


# ----------------------------------------------------------------------------- parameter trees

def path_str(path: Sequence) -> str:
    """('blocks', 0, 'attn1', 'to_q', 'kernel') -> 'blocks/0/attn1/to_q/kernel'."""
    return "/".join(str(p) for p in path)


def flat_vars(state) -> dict:
    """{path tuple: variable} of an ``nnx.State``."""
    return {tuple(p): v for p, v in state.flat_state()}


# ----------------------------------------------------------------------------- layer stacking

def stack_layers(state, num_layers: int):
    """Unrolled ('blocks', i, *rest) leaves -> stacked ('blocks', *rest) of shape [N, ...]."""
    flat = flat_vars(state)
    out: dict[tuple, Any] = {}
    groups: dict[tuple, dict[int, Any]] = {}
    for p, v in flat.items():
        if len(p) > 2 and p[0] == "blocks" and isinstance(p[1], int):
            groups.setdefault(("blocks",) + p[2:], {})[p[1]] = v
        else:
            out[p] = v
    for p, byidx in groups.items():
        if sorted(byidx) != list(range(num_layers)):
            raise CheckpointError(f"cannot stack {path_str(p)}: layers {sorted(byidx)} != 0..{num_layers - 1}")
        out[p] = byidx[0].replace(jnp.stack([byidx[i][...] for i in range(num_layers)]))
    return nnx.State.from_flat_path(out)


# ----------------------------------------------------------------------------- fingerprint

def _leaves(state) -> list:
    """Sorted ('/'-joined path, array) pairs of an nnx.State or a (nested or flat) mapping."""
    if hasattr(state, "flat_state"):
        items = [(path_str(p), v[...]) for p, v in state.flat_state()]
    else:
        items = []

        def walk(prefix, node):
            if isinstance(node, Mapping):
                for k, v in node.items():
                    walk(prefix + (k,) if not isinstance(k, tuple) else prefix + k, v)
            else:
                items.append((path_str(prefix), node[...] if isinstance(node, nnx.Variable) else node))

        walk((), state)
    return sorted(items, key=lambda kv: kv[0])


def _on_host(value) -> np.ndarray:
    """A parameter's values on the host; one split over several processes is gathered (one tensor at a time)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


class Fingerprint:
    """``fingerprint`` computed state by state (``add``), so the states need not be held together."""

    def __init__(self, num_states: int):
        self.num_states, self.added = num_states, 0
        self._h = hashlib.sha256(f"{FORMAT} fingerprint v1; {num_states} states\n".encode())

    def add(self, state) -> None:
        self.begin_state()
        self.add_leaves(state)

    def begin_state(self) -> None:
        if self.added == self.num_states:
            raise ValueError(f"fingerprint of {self.num_states} states: one too many")
        self._h.update(f"state {self.added}\n".encode())
        self.added += 1

    def add_leaves(self, part) -> None:
        """Leaves of the current state; parts must come in sorted path order (``convert_state_parts``)."""
        for name, value in _leaves(part):
            a = np.ascontiguousarray(_on_host(value))
            self._h.update(f"{name}\t{a.dtype.name}\t{list(a.shape)}\n".encode())
            raw = a.reshape(-1).view(np.uint8)
            if sys.byteorder == "big" and a.dtype.itemsize > 1:
                raw = a.reshape(-1).view(f">u{a.dtype.itemsize}").astype(f"<u{a.dtype.itemsize}").view(np.uint8)
            self._h.update(raw.data)  # raw.data: memoryview(raw)

    def hexdigest(self) -> str:
        if self.added != self.num_states:
            raise ValueError(f"fingerprint of {self.num_states} states: {self.added} added")
        return self._h.hexdigest()


def fingerprint(*states) -> str:
    """sha256 hex over canonical parameter bytes of each state in order: for every leaf (sorted by
    '/'-joined path) its path, dtype name, shape, then its raw little-endian bytes."""
    fp = Fingerprint(len(states))
    for state in states:
        fp.add(state)
    return fp.hexdigest()




# ----------------------------------------------------------------------------- abstract models

def abstract_model(factory: Callable[[], nnx.Module]):
    """(graphdef, abstract params State, other-variables State) of ``factory()`` without FLOPs.

    Non-parameter variables (if a module keeps any) are computed for real with a jitted
    constructor whose parameter initialisers are dead code.
    """
    graphdef, params, rest = _split_params(nnx.eval_shape(factory))
    if len(rest.flat_state()):
        rest = jax.jit(lambda: _split_params(factory())[2])()
    return graphdef, params, rest


def _split_params(node: nnx.Module) -> Tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``nnx.split(node, nnx.Param, ...)``: (graphdef, params, every other variable). Flax annotates a
    split with two or more filters as variable-length; with two it is exactly these three."""
    return cast("Tuple[nnx.GraphDef, nnx.State, nnx.State]", nnx.split(node, nnx.Param, ...))


def dit_factory(cfg: DiTConfig):
    return lambda: dit_lib.WanDiT(cfg, rngs=nnx.Rngs(0))


def vae_factory(cfg: VAEConfig):
    return lambda: vae_lib.WanVAE(cfg, rngs=nnx.Rngs(0))


ENCODERS = ("image_encoder", "text_encoder")  # optional components, each an orbax dir of that name


# ----------------------------------------------------------------------------- load

CONTEXT = "context.npy"
PART_COMPONENTS = ("dit", "vae")  # components load_model restores from parts (``parts`` in the manifest)
# Inclusive ranges of the encoder config fields (umT5-XXL: vocab 256384, d_model 4096, d_kv 64,
# d_ff 10240, 24 layers, 64 heads, 32 buckets, max distance 128; CLIP ViT-H/14: 1280 wide, mlp 5120,
# 32 layers, 16 heads, 224 px, patch 14), about 4x headroom; checked before an encoder is built.
ENCODER_LIMITS = {
    "text_encoder": dict(vocab_size=(1, 1 << 20), d_model=(1, 16384), d_kv=(1, 512), d_ff=(1, 65536),
                         num_layers=(1, 96), num_heads=(1, 256), relative_attention_num_buckets=(4, 256),
                         relative_attention_max_distance=(1, 4096), text_len=(1, 2048)),
    "image_encoder": dict(hidden_size=(1, 8192), intermediate_size=(1, 32768), num_hidden_layers=(1, 128),
                          num_attention_heads=(1, 256), image_size=(1, 1024), patch_size=(1, 256)),
}
ENCODER_EPS = {"text_encoder": "layer_norm_epsilon", "image_encoder": "layer_norm_eps"}
MAX_UMT5_INNER = 16384     # num_heads * d_kv
MAX_CLIP_GRID = 64         # image_size // patch_size (tokens = 1 + grid^2)


@dataclass
class LoadedModel:
    """A converted model restored from disk."""

    config: ModelConfig
    dit: nnx.Module
    vae: nnx.Module
    fingerprint: str
    path: str                                    # absolute
    image_encoder: Optional[nnx.Module] = None   # CLIP vision tower (models.clip), if the directory has one
    text_encoder: Optional[dict] = None          # the manifest's text_encoder entry (loaded on demand)
    context: Optional[np.ndarray] = None         # context.npy: the empty prompt's rows [n, text_dim] float32


def _read_manifest(path: str) -> dict:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.lexists(mpath):
        raise CheckpointError(f"{path} is not a converted model: {MANIFEST} is missing")
    data = read_regular(mpath, "model manifest", MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{mpath} is corrupt: {first_line(e)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{mpath}: unsupported format_version {str(manifest.get('format_version'))[:40]!r} "
                              f"(this gvc-jax reads {FORMAT_VERSION})")
    for k in ("name", "dit", "vae", "fingerprint"):
        if k not in manifest:
            raise CheckpointError(f"{mpath} is corrupt: field {k!r} is missing")
    check_manifest(manifest, mpath)
    return manifest


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's name."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _hex64(v) -> bool:
    return isinstance(v, str) and bool(_HEX64.match(v))


def check_manifest(manifest: dict, mpath: str = MANIFEST) -> None:
    """Type and range of every manifest field the loader uses, except the DiT / VAE configs
    (``model_config_from_manifest``): one CheckpointError line naming the field and ``mpath``."""
    def bad(msg):
        raise CheckpointError(f"{mpath}: {msg}")

    try:
        check_str("manifest", "name", manifest["name"])
        if not _hex64(manifest["fingerprint"]):
            bad(f"field 'fingerprint' must be 64 lowercase hex digits, got {str(manifest['fingerprint'])[:80]!r}")
        if manifest.get("context_sha256") is not None and not _hex64(manifest["context_sha256"]):
            bad("field 'context_sha256' must be 64 lowercase hex digits")
        parts = manifest.get("parts")
        if parts is not None:
            if not isinstance(parts, dict):
                bad(f"field 'parts' must be an object, got {type(parts).__name__}")
            for name, n in parts.items():
                if name not in PART_COMPONENTS:
                    bad(f"field 'parts' names {str(name)[:40]!r}; only {', '.join(PART_COMPONENTS)} may be in parts")
                check_int("manifest", f"parts.{name}", n, 1, MAX_PARTS)
        encoders = manifest.get("encoders")
        if encoders is not None:
            if not isinstance(encoders, dict) or set(encoders) - set(ENCODERS):
                shown = sorted(map(str, encoders))[:4] if isinstance(encoders, dict) else type(encoders).__name__
                bad(f"bad encoders entry {shown!r} (known: {', '.join(ENCODERS)})")
            for name, entry in encoders.items():
                if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                    bad(f"the {name} entry has no config")
                if not _hex64(entry.get("fingerprint")):
                    bad(f"field 'encoders.{name}.fingerprint' must be 64 lowercase hex digits")
                check_encoder_config(name, entry["config"])
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        bad(str(e))


def check_encoder_config(name: str, d: dict) -> None:
    """Types and ranges of an encoder's config dict (``ENCODER_LIMITS``); ValueError naming the field.
    The encoder's own config class checks the rest when it is built."""
    own = f"encoders.{name}.config"
    for field, (low, high) in ENCODER_LIMITS[name].items():
        if field in d:
            check_int(own, field, d[field], low, high)
    eps = ENCODER_EPS[name]
    if eps in d:
        check_real(own, eps, d[eps], 0.0, 0.1, open_low=True)
    for field in ("dense_act_fn", "hidden_act", "preprocess", "param_dtype", "dtype"):
        if field in d and (not isinstance(d[field], str) or len(d[field]) > 64):
            raise ValueError(f"{own}.{field} must be a short string")
    if name == "text_encoder" and isinstance(d.get("num_heads"), int) and isinstance(d.get("d_kv"), int) \
            and d["num_heads"] * d["d_kv"] > MAX_UMT5_INNER:
        raise ValueError(f"{own}: num_heads * d_kv must be at most {MAX_UMT5_INNER}")
    if name == "image_encoder" and isinstance(d.get("image_size"), int) and isinstance(d.get("patch_size"), int) \
            and d["image_size"] // d["patch_size"] > MAX_CLIP_GRID:
        raise ValueError(f"{own}: image_size / patch_size must be at most {MAX_CLIP_GRID}")


def _build_config(cls, d, mpath: str, what: str):
    if not isinstance(d, dict):
        raise CheckpointError(f"{mpath}: {what} config is not an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(d) - names))
    if unknown:
        raise CheckpointError(f"{mpath}: unknown {what} config fields {unknown[:8]}")
    try:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{mpath}: bad {what} config: {first_line(e)}") from None


def model_config_from_manifest(manifest: dict, mpath: str = MANIFEST) -> ModelConfig:
    """The ModelConfig of a manifest; every field type- and range-checked (``configs``), one
    CheckpointError line naming the field and ``mpath``."""
    dit = _build_config(DiTConfig, manifest["dit"], mpath, "dit")
    vae = _build_config(VAEConfig, manifest["vae"], mpath, "vae")
    try:
        return ModelConfig(manifest["name"], dit, vae, manifest.get("default_shift"), manifest.get("native_size"))
    except ValueError as e:
        raise CheckpointError(f"{mpath}: {e}") from None


def _abstract(factory, mpath: str, what: str):
    """``abstract_model`` of a config that passed its range checks; a module's own refusal (e.g.
    an unsupported patch size) becomes one CheckpointError line naming ``mpath``."""
    try:
        return abstract_model(factory)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{mpath}: unsupported {what} config: {first_line(e)}") \
            from None


def _component_dirs(ckpt_dir: str, what: str, parts: Optional[int], num_tensors: int) -> list:
    """The orbax directories of one component (``ckpt_dir`` or its ``part-NNN``), checked to exist
    and to hold only regular files and directories (``check_tree``) before anything reads them."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{what}: checkpoint directory {ckpt_dir} is missing")
    if parts is None:
        dirs = [ckpt_dir]
    else:
        if parts > num_tensors:
            raise CheckpointError(f"{what}: {parts:,} parts in the manifest, more than the {num_tensors:,} tensors "
                                  f"its config has ({ckpt_dir})")
        dirs = [os.path.join(ckpt_dir, f"part-{k:03d}") for k in range(parts)]
        missing = [d for d in dirs if not os.path.isdir(d)]
        if missing:
            raise CheckpointError(f"{what}: part directory {missing[0]} is missing ({len(missing)} of {parts} parts "
                                  "listed in the manifest are missing)")
    check_tree(ckpt_dir, what)
    return dirs


def _restore(ckpt_dir: str, abstract_params, device, what: str, sharding: Optional[Callable] = None,
             parts: Optional[int] = None):
    """Restore one orbax checkpoint (or ``parts`` of them, ``ckpt_dir/part-NNN``, each with some
    of the leaves) into the layout of ``abstract_params`` after checking that the directories exist
    and hold only regular files, and that the stored paths, shapes and dtypes match exactly.
    ``sharding(shape)``: where each tensor goes (each device reads only its part), default the one
    ``device``."""
    import orbax.checkpoint as ocp  # heavy (tensorstore): imported only when a model is read

    ckpt_dir = os.path.abspath(ckpt_dir)  # orbax resolves relative paths against nothing useful
    flat = {path_str(p): v for p, v in abstract_params.flat_state()}
    dirs = _component_dirs(ckpt_dir, what, parts, len(flat))
    with ocp.StandardCheckpointer() as ckptr:
        meta: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for d in dirs:
            try:
                tree = ckptr.metadata(d).item_metadata.tree
                if not isinstance(tree, Mapping):
                    raise ValueError(f"no parameter tree (got {type(tree).__name__})")
            except Exception as e:  # orbax raises many types for unreadable directories
                raise CheckpointError(f"{what}: cannot read checkpoint {d}: {first_line(e)}") from None
            for k, v in tree.items():
                if k in meta:
                    raise CheckpointError(f"{what}: parameter {k} is stored twice ({owner[k]}, {d})")
                meta[k], owner[k] = v, d
        problems = [f"missing parameter {k}" for k in sorted(set(flat) - set(meta))]
        problems += [f"unexpected parameter {str(k)[:200]}" for k in sorted(map(str, set(meta) - set(flat)))]
        for k in sorted(set(flat) & set(meta)):
            want = (tuple(flat[k].shape), np.dtype(flat[k].dtype))
            try:
                got = (tuple(meta[k].shape), np.dtype(meta[k].dtype))
            except (AttributeError, TypeError) as e:
                problems.append(f"parameter {k}: unreadable metadata ({e})")
                continue
            if want != got:
                problems.append(f"parameter {k}: stored {got[0]} {got[1].name}, config needs {want[0]} {want[1].name}")
        raise_problems(problems, f"{what} ({ckpt_dir}) does not match its config")
        single = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        arrays = {}
        for d in dirs:
            target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding(v.shape) if sharding else single)
                      for k, v in flat.items() if owner[k] == d}
            try:
                arrays.update(ckptr.restore(d, target))
            except Exception as e:
                raise CheckpointError(f"{what}: cannot restore {d}: {first_line(e)}") from None
    return nnx.State.from_flat_path({p: v.replace(arrays[path_str(p)]) for p, v in abstract_params.flat_state()})


def load_model(path: str, *, scan_layers: Optional[bool] = None, remat: Optional[bool] = None,
               dtype: Optional[str] = None, device=None, dit_sharding: Optional[Callable] = None) -> LoadedModel:
    """Restore a converted model directory written by ``save_model``.

    Raises CheckpointError (one line) for a missing directory, a missing/corrupt/oversized manifest,
    a config field of the wrong type or out of range, bad part counts, missing orbax directories,
    non-regular files (FIFOs, devices, also behind symlinks), a ``context.npy`` whose header or size
    does not fit the config, parameters that do not match the stored config, or a fingerprint
    mismatch; all but the last two before any parameter is read. ``path`` may be relative: the
    returned ``LoadedModel.path`` is absolute. ``scan_layers`` / ``remat`` / ``dtype`` override the
    DiT execution options (weights unchanged). ``dit_sharding(shape)``: the sharding of each DiT
    tensor (e.g. ``parallel.GopMesh.weight_sharding``): every tensor is read straight onto its
    shards, so the DiT is never whole on one device.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise CheckpointError(f"model directory {path} is not a directory")
        raise CheckpointError(f"model directory {path} does not exist")
    mpath = os.path.join(path, MANIFEST)
    manifest = _read_manifest(path)
    config = model_config_from_manifest(manifest, mpath)
    stored_dit = config.dit.replace(scan_layers=False, remat=False)
    g_dit, a_dit, r_dit = _abstract(dit_factory(stored_dit), mpath, "dit")
    g_vae, a_vae, r_vae = _abstract(vae_factory(config.vae), mpath, "vae")
    parts = manifest.get("parts") or {}
    encoders = manifest.get("encoders") or {}
    # Everything that can be checked without reading parameters, before reading any.
    _component_dirs(os.path.join(path, "dit"), "DiT", parts.get("dit"), len(a_dit.flat_state()))
    _component_dirs(os.path.join(path, "vae"), "VAE", parts.get("vae"), len(a_vae.flat_state()))
    if "image_encoder" in encoders:
        _component_dirs(os.path.join(path, "image_encoder"), "image encoder", None, 1)
    context = read_context(path, config.dit, manifest.get("context_sha256"))
    dit_params = _restore(os.path.join(path, "dit"), a_dit, device, "DiT", dit_sharding, parts.get("dit"))
    vae_params = _restore(os.path.join(path, "vae"), a_vae, device, "VAE", parts=parts.get("vae"))
    image_encoder, image_params = None, []
    if "image_encoder" in encoders:
        image_encoder = load_image_encoder(path, encoders["image_encoder"], device, verify=False)  # in `fp`
        image_params = [nnx.state(image_encoder, nnx.Param)]
    fp = fingerprint(dit_params, vae_params, *image_params)
    if fp != manifest["fingerprint"]:
        raise CheckpointError(f"fingerprint mismatch in {path}: weights give {fp[:16]}..., manifest says "
                              f"{str(manifest['fingerprint'])[:16]}... (modified or corrupted files)")
    overrides = {k: v for k, v in (("scan_layers", scan_layers), ("remat", remat), ("dtype", dtype)) if v is not None}
    dit_cfg = config.dit.replace(**overrides)
    config = dataclasses.replace(config, dit=dit_cfg)
    if dit_cfg.scan_layers or dit_cfg.remat:
        g_dit, _, r_dit = abstract_model(dit_factory(dit_cfg))
        if dit_cfg.scan_layers:
            dit_params = stack_layers(dit_params, dit_cfg.num_layers)
    dit = nnx.merge(g_dit, dit_params, r_dit)
    vae = nnx.merge(g_vae, vae_params, r_vae)
    return LoadedModel(config, dit, vae, fp, path, image_encoder, encoders.get("text_encoder"), context)


def _encoder_config(cls, entry, path: str, what: str):
    mpath = os.path.join(path, MANIFEST)
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise CheckpointError(f"{mpath}: the {what} entry has no config")
    try:
        check_encoder_config(what, entry["config"])
    except ValueError as e:
        raise CheckpointError(f"{mpath}: {e}") from None
    return _build_config(cls, entry["config"], mpath, what)


def _restore_encoder(path: str, name: str, entry: dict, factory, device, verify: bool = True) -> nnx.Module:
    """``verify``: check the encoder's own fingerprint (off where the model's fingerprint covers it)."""
    path = os.path.abspath(os.fspath(path))
    graph, abstract, rest = _abstract(factory, os.path.join(path, MANIFEST), name)
    params = _restore(os.path.join(path, name), abstract, device, name.replace("_", " "))
    if verify and fingerprint(params) != entry.get("fingerprint"):
        raise CheckpointError(f"fingerprint mismatch in {os.path.join(path, name)} (modified or corrupted files)")
    return nnx.merge(graph, params, rest)


def load_image_encoder(path: str, entry: dict, device=None, verify: bool = True) -> nnx.Module:
    """The CLIP vision tower of a model directory (``models.clip.CLIPVisionTower``); ``path`` may be relative."""
    path = os.path.abspath(os.fspath(path))
    cfg = _encoder_config(CLIPVisionConfig, entry, path, "image_encoder")
    return _restore_encoder(path, "image_encoder", entry, lambda: CLIPVisionTower(cfg, rngs=nnx.Rngs(0)), device,
                            verify)


def load_text_encoder(path: str, entry: dict, device=None):
    """The umT5 encoder and tokenizer of a model directory: (``UMT5Encoder``, ``TextTokenizer``);
    ``path`` may be relative. ``tokenizer.json`` must be a regular file of at most
    ``MAX_TOKENIZER_BYTES``."""
    path = os.path.abspath(os.fspath(path))
    cfg = _encoder_config(UMT5Config, entry, path, "text_encoder")
    tpath = os.path.join(path, "tokenizer.json")
    check_regular_file(tpath, "tokenizer", MAX_TOKENIZER_BYTES)
    encoder = _restore_encoder(path, "text_encoder", entry, lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)), device)
    try:
        tokenizer = TextTokenizer.from_file(tpath)
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e).splitlines()[0] if str(e) else f"tokenizer {tpath} cannot be read") from None
    return encoder, tokenizer


_NPY_MAX_HEADER = 65536


def read_context(path: str, dit_cfg: DiTConfig, want_sha256: Optional[str] = None) -> Optional[np.ndarray]:
    """``context.npy`` of a model directory (the empty prompt's rows, float32 [n, text_dim] with
    n <= text_len), or None when there is none (then ``want_sha256`` must be None too).

    The file must be a regular file (``open_regular``); its ``.npy`` header is parsed first and must
    declare a C-order float32 array of that shape, and the file must be exactly as long as the
    header implies; only then are the rows read (at most text_len * text_dim * 4 bytes) and their
    sha256 compared with ``want_sha256``. One CheckpointError line otherwise."""
    cpath = os.path.join(path, CONTEXT)
    what = "empty-prompt context"
    if not os.path.lexists(cpath):
        if want_sha256 is not None:
            raise CheckpointError(f"{what} {cpath} is missing (the manifest lists its sha256)")
        return None
    fmt = np.lib.format
    row_bytes = dit_cfg.text_dim * 4
    with open_regular(cpath, what, _NPY_MAX_HEADER + dit_cfg.text_len * row_bytes) as (f, size):
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
        except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize.TokenError...
            raise CheckpointError(f"{what} {cpath} is not a valid .npy file: {first_line(e)}") from None
        offset = f.tell()
        if dtype.kind != "f" or dtype.itemsize != 4 or dtype.fields is not None or dtype.subdtype is not None:
            raise CheckpointError(f"{what} {cpath} holds {dtype}, expected float32")
        if fortran and len(shape) > 1:
            raise CheckpointError(f"{what} {cpath} is in Fortran order, expected C order")
        if (len(shape) != 2 or shape[1] != dit_cfg.text_dim or not 0 <= shape[0] <= dit_cfg.text_len):
            raise CheckpointError(f"{what} {cpath} has shape {tuple(shape)}, expected [n <= {dit_cfg.text_len}, "
                                  f"{dit_cfg.text_dim}] (text_len, text_dim of the DiT)")
        want_size = offset + shape[0] * row_bytes
        if size != want_size:
            raise CheckpointError(f"{what} {cpath} is {size:,} bytes, its header implies {want_size:,}")
        f.seek(0)
        raw = f.read(want_size + 1)
    if len(raw) != want_size:
        raise CheckpointError(f"{what} {cpath} changed size while being read")
    if want_sha256 is not None and hashlib.sha256(raw).hexdigest() != want_sha256:
        raise CheckpointError(f"{cpath} does not match its sha256 in the manifest (modified or corrupted)")
    rows = np.frombuffer(raw, dtype, count=shape[0] * dit_cfg.text_dim, offset=offset)
    return rows.reshape(shape).astype(np.float32)
