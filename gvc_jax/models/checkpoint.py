"""Converted-model checkpoints: table-driven torch -> Flax conversion, fingerprint, save and load.

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

The conversion target is an abstract model, ``nnx.eval_shape(lambda: Model(cfg, rngs=...))``:
its parameter tree is both the destination and the coverage oracle (docs/method_notes.md
§Checkpoint layouts). Source tensors are read lazily one at a time, transformed (torch layout ->
Flax layout), cast to the leaf's dtype and placed; any missing, unused or misshapen key raises
``CheckpointError``. ``load_diffusers_dit`` / ``load_diffusers_vae`` do the same for a state dict
already in memory (tests, benchmarks).
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, TypeVar, cast

import jax
import numpy as np
from flax import nnx

from gvc_jax._memory import release_freed_memory
from gvc_jax.models import dit as dit_lib
from gvc_jax.models import vae as vae_lib
from gvc_jax.models.configs import DiTConfig, ModelConfig, VAEConfig

FORMAT = "gvc-jax-model"
FORMAT_VERSION = 1
MANIFEST = "gvc_model.json"
# Source keys that are ignored on purpose (diffusers ignores stray ``norm_added_q`` on load too).
STRAY_KEY = re.compile(r"(^|\.)norm_added_q\.(weight|bias)$")
_EXEC_OPTIONS = ("scan_layers", "remat", "dtype")  # DiT options that are not part of the weights
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


def read_json_object(path: str, what: str = "JSON file", max_bytes: int = MAX_MANIFEST_BYTES) -> dict:
    """A JSON object from ``path`` (``read_regular``); CheckpointError for anything else."""
    data = read_regular(path, what, max_bytes)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{what} {path} is not valid JSON: {_first_line(e)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} is not a JSON object")
    return obj


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


# ----------------------------------------------------------------------------- sources

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


def path_str(path: Sequence) -> str:
    """('blocks', 0, 'attn1', 'to_q', 'kernel') -> 'blocks/0/attn1/to_q/kernel'."""
    return "/".join(str(p) for p in path)


# ----------------------------------------------------------------------------- transforms

def torch_to_flax(key: str, a: np.ndarray, target_shape: Sequence[int]) -> np.ndarray:
    """One torch tensor -> the layout of its Flax leaf (docs/method_notes.md §Checkpoint layouts).
    Views only, no copy.

    Linear ``weight`` [O, I] -> [I, O]; Conv3d [O, I, t, h, w] -> [t, h, w, I, O]; Conv2d
    [O, I, h, w] -> [h, w, I, O]; a 1x1 conv kept as Linear (target 2-D) -> [I, O]; anything else
    (biases, norm weights, VAE ``gamma`` [C, 1, 1(, 1)], tables) is reshaped only when it differs
    from the target by unit dims. The caller checks the resulting shape.
    """
    target_shape = tuple(int(s) for s in target_shape)
    if key.endswith(".weight") and a.ndim >= 2 and len(target_shape) == a.ndim:
        if a.ndim == 2:
            return a.T
        return a.transpose(*range(2, a.ndim), 1, 0)
    if key.endswith(".weight") and a.ndim > 2 and len(target_shape) == 2 and all(s == 1 for s in a.shape[2:]):
        return a.reshape(a.shape[0], a.shape[1]).T
    if a.shape != target_shape and [s for s in a.shape if s != 1] == [s for s in target_shape if s != 1]:
        return a.reshape(target_shape)
    return a


def _stub(shape: Sequence[int], dtype) -> np.ndarray:
    """A zero-stride array of ``shape``: lets a transform be checked for shape without memory."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


# ----------------------------------------------------------------------------- conversion

def _flat_vars(state) -> dict:
    return {tuple(p): v for p, v in state.flat_state()}


def _resolve(path: tuple, flat: dict) -> Optional[Tuple[tuple, Optional[int]]]:
    """Target leaf of ``path``: (path, None) for a plain leaf, (stacked_path, i) when the abstract
    tree stacks the layer index (scan_layers: ('blocks', i, *rest) -> ('blocks', *rest)[i])."""
    if path in flat:
        return path, None
    if len(path) > 2 and path[0] == "blocks" and isinstance(path[1], int):
        stacked = path[:1] + path[2:]
        var = flat.get(stacked)
        if var is not None and len(var.shape) > 0 and path[1] < var.shape[0]:
            return stacked, path[1]
    return None


def _as_dtype(name) -> np.dtype:
    import jax.numpy as jnp

    return np.dtype(jnp.dtype(name))


def convert_state(
    source: Mapping[str, LazyTensor],
    abstract_state,
    key_to_path: Callable[[str], tuple],
    transform: Callable[[str, np.ndarray, Sequence[int]], np.ndarray] = torch_to_flax,
    *,
    what: str = "checkpoint",
    ignore: Optional[re.Pattern] = STRAY_KEY,
    device=None,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
):
    """Fill an abstract ``nnx.State`` (parameters) from ``source`` tensors, one tensor at a time.

    ``key_to_path(key)`` gives the Flax path of a source key (a KeyError/ValueError marks the key
    as unused); ``transform(key, array, target_shape)`` reorders axes. Every target leaf must be
    covered exactly once and every source key used (except ``ignore`` matches); all problems are
    checked before any tensor is read and raised together as one CheckpointError, one line each.
    Arrays are cast to the leaf dtype on the host and placed on ``device`` (default device if None).
    """
    flat, plan = _conversion_plan(source, abstract_state, key_to_path, transform, what, ignore)
    values = _materialize(plan, flat, source, transform, device, progress)
    return nnx.State.from_flat_path({p: v.replace(values[p]) for p, v in flat.items()})


def convert_state_parts(source: Mapping[str, LazyTensor], abstract_state, key_to_path: Callable[[str], tuple],
                        transform: Callable = torch_to_flax, *, part_bytes: int, what: str = "checkpoint",
                        ignore: Optional[re.Pattern] = STRAY_KEY, device=None,
                        progress: Optional[Callable[[Iterable], Iterable]] = None) -> Iterator:
    """``convert_state`` in parts: every problem is checked first, then the parameters are read and
    yielded as States of consecutive leaves (in sorted path order) of about ``part_bytes`` each, so
    only one part is held at a time. Concatenated in order the parts are ``convert_state``'s State
    (same leaves, same fingerprint). A layer-stacked state is one part."""
    flat, plan = _conversion_plan(source, abstract_state, key_to_path, transform, what, ignore)
    if any(_is_stacked_leaf(leaf) for leaf in flat):
        groups = [sorted(flat, key=path_str)]
    else:
        groups, size = [[]], 0
        for leaf in sorted(flat, key=path_str):
            nbytes = int(np.prod(flat[leaf].shape)) * _as_dtype(flat[leaf].dtype).itemsize
            if groups[-1] and size + nbytes > part_bytes:
                groups.append([])
                size = 0
            groups[-1].append(leaf)
            size += nbytes
    by_leaf: dict[tuple, list] = {}
    for item in plan:
        by_leaf.setdefault(item[1], []).append(item)
    for group in groups:
        items = [it for leaf in group for it in by_leaf.get(leaf, ())]
        values = _materialize(items, flat, source, transform, device, progress)
        yield nnx.State.from_flat_path({p: flat[p].replace(values[p]) for p in group})
        del values


def _conversion_plan(source, abstract_state, key_to_path, transform, what, ignore):
    """-> (flat abstract leaves, [(key, leaf, stack index, target shape)]); raises every problem."""
    flat = _flat_vars(abstract_state)
    plan, problems, seen = [], [], {}
    for key in sorted(source):
        if ignore is not None and ignore.search(key):
            continue
        try:
            path = tuple(key_to_path(key))
        except (KeyError, ValueError):
            problems.append(f"unused source key {key!r} (no parameter of this model)")
            continue
        target = _resolve(path, flat)
        if target is None:
            problems.append(f"unused source key {key!r} (no parameter {path_str(path)} in this model)")
            continue
        if target in seen:
            problems.append(f"source keys {seen[target]!r} and {key!r} both map to {path_str(path)}")
            continue
        seen[target] = key
        leaf, idx = target
        want = tuple(flat[leaf].shape[1:] if idx is not None else flat[leaf].shape)
        t = source[key]
        try:
            got = tuple(transform(key, _stub(t.shape, np.float32), want).shape)
        except ValueError:
            got = None
        if got != want:
            problems.append(f"shape mismatch for {key!r}: source {tuple(t.shape)}, "
                            f"parameter {path_str(path)} needs {want}")
            continue
        plan.append((key, leaf, idx, want))
    covered = {}
    for leaf, idx in seen:
        covered.setdefault(leaf, set()).add(idx)
    for leaf, var in flat.items():
        got = covered.get(leaf, set())
        if None in got:
            continue
        n = var.shape[0] if _is_stacked_leaf(leaf) else None
        if n is None:
            problems.append(f"missing parameter {path_str(leaf)} (no source key for it)")
        else:
            for i in range(n):
                if i not in got:
                    problems.append(f"missing parameter {path_str(leaf[:1] + (i,) + leaf[1:])} (no source key for it)")
    raise_problems(problems, what)
    return flat, plan


def _materialize(plan, flat, source, transform, device, progress) -> dict:
    """Read, transform, cast and place the tensors of ``plan`` -> {leaf: array}."""
    values: dict[tuple, Any] = {}
    stacks: dict[tuple, list] = {}  # leaf -> [stacked host array, layers filled]
    for key, leaf, idx, want in (progress(plan) if progress else plan):
        dtype = _as_dtype(flat[leaf].dtype)
        a = np.asarray(transform(key, source[key].load(), want)).astype(dtype, copy=False)
        if idx is None:
            values[leaf] = jax.device_put(np.ascontiguousarray(a), device)
        else:
            buf = stacks.get(leaf)
            if buf is None:
                buf = stacks[leaf] = [np.empty(flat[leaf].shape, dtype), 0]
            buf[0][idx] = a
            buf[1] += 1
            if buf[1] == flat[leaf].shape[0]:
                values[leaf] = jax.device_put(buf[0], device)
                del stacks[leaf]
        del a
    return values


def in_memory_source(tensors: Mapping[str, np.ndarray]) -> dict:
    """A state dict already in memory (numpy arrays, torch layout) as a ``convert_state`` source."""
    return {k: LazyTensor(tuple(np.shape(v)), str(np.asarray(v).dtype), functools.partial(np.asarray, v), origin=k)
            for k, v in tensors.items()}


_M = TypeVar("_M", bound=nnx.Module)


def load_state_dict(model: _M, tensors: Mapping[str, np.ndarray],
                    key_to_path: Callable[[str], tuple], *, what: str) -> _M:
    """Copy an in-memory torch-layout state dict into ``model`` in place (the converter's rules and
    checks: ``convert_state``); raises ``CheckpointError`` listing every problem. Returns ``model``."""
    state = convert_state(in_memory_source(tensors), nnx.state(model, nnx.Param), key_to_path, what=what)
    nnx.update(model, state)
    return model


def load_diffusers_dit(model: dit_lib.WanDiT, tensors: Mapping[str, np.ndarray]) -> dit_lib.WanDiT:
    """Load an in-memory diffusers ``WanTransformer3DModel`` state dict (numpy arrays, torch layout)
    into ``model`` in place (``load_state_dict``: stray ``norm_added_q`` keys are ignored, layers are
    stacked in scan mode). Raises ``CheckpointError`` listing every missing, unused and misshapen key."""
    return load_state_dict(model, tensors, dit_lib.diffusers_key_to_path, what="diffusers DiT state dict")


def load_diffusers_vae(model: vae_lib.WanVAE, tensors: Mapping[str, np.ndarray]) -> vae_lib.WanVAE:
    """Load an in-memory diffusers ``AutoencoderKLWan`` state dict (numpy arrays, torch layout) into
    ``model`` in place (``load_state_dict``). Raises ``CheckpointError`` listing every unused key,
    uncovered parameter and shape mismatch."""
    return load_state_dict(model, tensors, vae_lib.diffusers_key_to_path, what="diffusers VAE state dict")


def _is_stacked_leaf(leaf: tuple) -> bool:
    """True for scan-stacked block leaves (path ('blocks', ...) without an int after it)."""
    return len(leaf) > 1 and leaf[0] == "blocks" and not isinstance(leaf[1], int)


# ----------------------------------------------------------------------------- layer stacking

def stack_layers(state, num_layers: int):
    """Unrolled ('blocks', i, *rest) leaves -> stacked ('blocks', *rest) of shape [N, ...]."""
    import jax.numpy as jnp

    flat = _flat_vars(state)
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


def unstack_layers(state):
    """Stacked ('blocks', *rest) [N, ...] leaves -> unrolled ('blocks', i, *rest)."""
    out = {}
    for p, v in _flat_vars(state).items():
        if len(p) > 1 and p[0] == "blocks" and not isinstance(p[1], int):
            arr = v[...]
            for i in range(arr.shape[0]):
                out[("blocks", i) + p[1:]] = v.replace(arr[i])
        else:
            out[p] = v
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
        from jax.experimental import multihost_utils

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


def param_count(*states) -> int:
    return sum(int(np.prod(v.shape)) for s in states for _, v in s.flat_state())


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


ENCODERS = ("image_encoder", "text_encoder")  # optional components, each an orbax dir of that name


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
        import orbax.checkpoint as ocp

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
        raise CheckpointError(f"{mpath} is corrupt: {_first_line(e)}") from None
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


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def _hex64(v) -> bool:
    return isinstance(v, str) and bool(_HEX64.match(v))


def check_manifest(manifest: dict, mpath: str = MANIFEST) -> None:
    """Type and range of every manifest field the loader uses, except the DiT / VAE configs
    (``model_config_from_manifest``): one CheckpointError line naming the field and ``mpath``."""
    from gvc_jax.models.configs import check_int, check_str

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
    from gvc_jax.models.configs import check_int, check_real

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
        raise CheckpointError(f"{mpath}: bad {what} config: {_first_line(e)}") from None


def model_config_from_manifest(manifest: dict, mpath: str = MANIFEST) -> ModelConfig:
    """The ModelConfig of a manifest; every field type- and range-checked (``configs``), one
    CheckpointError line naming the field and ``mpath``."""
    dit = _build_config(DiTConfig, manifest["dit"], mpath, "dit")
    vae = _build_config(VAEConfig, manifest["vae"], mpath, "vae")
    try:
        return ModelConfig(manifest["name"], dit, vae, manifest.get("default_shift"))
    except ValueError as e:
        raise CheckpointError(f"{mpath}: {e}") from None


def _abstract(factory, mpath: str, what: str):
    """``abstract_model`` of a config that passed its range checks; a module's own refusal (e.g.
    an unsupported patch size) becomes one CheckpointError line naming ``mpath``."""
    try:
        return abstract_model(factory)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{mpath}: unsupported {what} config: {_first_line(e)}") \
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
    import orbax.checkpoint as ocp

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
                raise CheckpointError(f"{what}: cannot read checkpoint {d}: {_first_line(e)}") from None
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
                raise CheckpointError(f"{what}: cannot restore {d}: {_first_line(e)}") from None
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
    from gvc_jax.models.clip import CLIPVisionConfig, CLIPVisionTower

    path = os.path.abspath(os.fspath(path))
    cfg = _encoder_config(CLIPVisionConfig, entry, path, "image_encoder")
    return _restore_encoder(path, "image_encoder", entry, lambda: CLIPVisionTower(cfg, rngs=nnx.Rngs(0)), device,
                            verify)


def load_text_encoder(path: str, entry: dict, device=None):
    """The umT5 encoder and tokenizer of a model directory: (``UMT5Encoder``, ``TextTokenizer``);
    ``path`` may be relative. ``tokenizer.json`` must be a regular file of at most
    ``MAX_TOKENIZER_BYTES``."""
    from gvc_jax.models.tokenizer import TextTokenizer
    from gvc_jax.models.umt5 import UMT5Config, UMT5Encoder

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
            raise CheckpointError(f"{what} {cpath} is not a valid .npy file: {_first_line(e)}") from None
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
