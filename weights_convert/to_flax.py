"""Source tensors (torch layout) -> the parameter State of a Flax model: the table-driven conversion.

The conversion target is an abstract model, ``nnx.eval_shape(lambda: Model(cfg, rngs=...))``:
its parameter tree is both the destination and the coverage oracle (docs/method_notes.md
§Checkpoint layouts). Source tensors (``weights_convert.sources``: ``{key: LazyTensor}``) are read
lazily one at a time, transformed (torch layout -> Flax layout), cast to the leaf's dtype and
placed; any missing, unused or misshapen key raises ``CheckpointError``. ``load_diffusers_dit`` /
``load_diffusers_vae`` do the same for a state dict already in memory (tests, benchmarks).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gvc_jax.models import dit as dit_lib
from gvc_jax.models import vae as vae_lib
from gvc_jax.models.checkpoint import flat_vars, path_str, raise_problems
from weights_convert.sources import LazyTensor, in_memory_source

# Source keys that are ignored on purpose (diffusers ignores stray ``norm_added_q`` on load too).
STRAY_KEY = re.compile(r"(^|\.)norm_added_q\.(weight|bias)$")


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
    flat = flat_vars(abstract_state)
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
