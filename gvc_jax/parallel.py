"""GOPs side by side: a mesh with a ``gop`` axis over the devices (of every process, with
``jax.distributed``), one GOP per device; a ``model`` axis splits the DiT's weights.

A wave of the plan (GOPs whose dependencies are all decoded) is coded in chunks of up to
``GopMesh.size`` GOPs. Each chunk runs as ONE ``shard_map`` program whose per-device body is the
*single-GOP* program: every device gets a block of exactly one GOP, squeezes the block axis and
runs the same computation the one-device path runs. The GOPs are never batched *inside* a
device (``vmap`` would turn the trajectory's ``lax.cond`` into a select of both branches and batch
its matmuls, which changes the floating-point results), so a stream coded on N devices decodes on
one device without drift, and the other way round (tested on 1, 2 and 4 CPU devices).

A short chunk (the end of a wave) is padded by repeating its last GOP; the padding's results are
dropped. With one device nothing is wrapped: the plain jitted programs run, exactly as before.
Weights are replicated once per engine (``replicate``); single-device work between the parallel
steps (anchor conditioning) uses device 0's copy (``local``), so it is not repeated on every device.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

GOP_AXIS = "gop"


class DeviceCountError(ValueError):
    """``--devices`` asks for more devices than this process has, or fewer than one."""


def local_device_count() -> int:
    return jax.local_device_count()


def check_devices(devices) -> int:
    """Validated number of devices to code GOPs on (None: all local devices; a ``GopMesh``: its)."""
    have = local_device_count()
    if devices is None:
        return have
    if isinstance(devices, GopMesh):
        return len(devices.devices)
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or not 1 <= devices <= have:
        raise DeviceCountError(f"devices must be an integer in [1, {have}] (this process has {have} "
                               f"{jax.default_backend()} device{'s' if have > 1 else ''}), got {devices!r}")
    return int(devices)


def _stack(items: Sequence) -> object:
    return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *items)


def init_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                     process_id: Optional[int] = None, timeout: int = 300) -> None:
    """``jax.distributed.initialize`` before any JAX work. Cloud TPU: no arguments (detected);
    GPU clusters: ``HOST:PORT``, the process count and this process's id, or the usual environment
    variables (SLURM / Open MPI). CPU processes (tests, laptops) exchange data through gloo.
    ``timeout``: seconds to wait for every process to join (JAX then aborts the process; the
    command-line tools end it earlier with a one-line error, ``cli.start_distributed``)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kw: dict[str, Any] = {k: v for k, v in (("coordinator_address", coordinator), ("num_processes", num_processes),
                            ("process_id", process_id)) if v is not None}
    jax.distributed.initialize(**kw, initialization_timeout=int(timeout))


def _global(x, sharding):
    """A host value that every process holds identically, as an array on ``sharding`` (which may
    span processes): each process fills its own devices' parts."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def check_weight_shards(shards: int, devices: int) -> int:
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1 or devices % shards:
        raise DeviceCountError(
            f"weight shards must be a positive divisor of the {devices} devices used, got {shards!r}")
    return int(shards)


def shard_spec(shape: Sequence[int], shards: int) -> P:
    """How one weight is split over the ``model`` axis: its largest dimension that ``shards``
    divides (the last of equals), if the weight is a matrix (or a stack of them); else replicated."""
    if shards == 1 or len(shape) < 2:
        return P()
    dims = [d for d in range(len(shape)) if shape[d] % shards == 0 and shape[d] >= shards]
    if not dims:
        return P()
    best = max(dims, key=lambda d: (shape[d], d))
    return P(*[MODEL_AXIS if d == best else None for d in range(len(shape))])


MODEL_AXIS = "model"


class GopMesh:
    """The first ``devices`` local devices on a mesh ``gop`` x ``model``.

    ``weight_shards`` (default 1) devices form the ``model`` axis: the DiT's matrices are split
    over them (FSDP-style: each device holds 1/``weight_shards`` of every large weight; XLA's SPMD
    partitioner gathers what a layer needs), for models that do not fit on one device. The
    ``gop`` axis has ``devices / weight_shards`` entries, one GOP each.
    """

    @classmethod
    def of(cls, devices) -> "GopMesh":
        """``devices``: a ``GopMesh``, a device count, or None (all local devices)."""
        return devices if isinstance(devices, GopMesh) else cls(devices)

    def __init__(self, devices: Optional[int] = None, weight_shards: int = 1):
        local = check_devices(devices)
        self.distributed = jax.process_count() > 1
        if self.distributed and local != jax.local_device_count():
            raise DeviceCountError("with several processes every process codes on all its local devices "
                                   "(leave out --devices)")
        self.weight_shards = check_weight_shards(weight_shards, local)
        # several processes: the devices of all of them (a process's devices are adjacent rows)
        self.devices = tuple(sorted(jax.devices(), key=lambda d: (d.process_index, d.id))) if self.distributed \
            else tuple(jax.local_devices()[:local])
        self.size = len(self.devices) // self.weight_shards  # GOPs side by side
        grid = np.array(self.devices).reshape(self.size, self.weight_shards)
        self.mesh = Mesh(grid, (GOP_AXIS, MODEL_AXIS)) if len(self.devices) > 1 else None
        me = jax.process_index()
        self.local_positions = frozenset(g for g in range(self.size) if grid[g, 0].process_index == me)

    def __repr__(self) -> str:
        return f"GopMesh({self.size} GOPs x {self.weight_shards} weight shards, {self.devices[0].platform})"

    def chunks(self, wave: Sequence) -> List[Sequence]:
        """A wave's GOPs in index order, in runs of at most ``size``."""
        return [wave[i:i + self.size] for i in range(0, len(wave), self.size)]

    def replicate(self, tree):
        """Put a pytree (weights) on every device of the mesh, once."""
        if self.mesh is None:
            return tree
        shared = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda a: _global(a, shared) if hasattr(a, "shape") else a, tree)

    def shard_weights(self, tree):
        """Put a pytree of weights on the mesh: matrices split over ``model`` (``shard_spec``),
        replicated over ``gop``; without weight shards, the same as ``replicate``."""
        if self.mesh is None or self.weight_shards == 1:
            return self.replicate(tree)
        return jax.tree.map(lambda a: _global(a, self.weight_sharding(a.shape)) if hasattr(a, "shape") else a, tree)

    def weight_sharding(self, shape):
        """Where a DiT tensor of ``shape`` lives (``shard_weights``'s layout): for loading a
        checkpoint straight onto the shards (``checkpoint.load_model(dit_sharding=...)``)."""
        if self.mesh is None:
            return jax.sharding.SingleDeviceSharding(self.devices[0])
        spec = shard_spec(tuple(shape), self.weight_shards) if self.weight_shards > 1 else P()
        return NamedSharding(self.mesh, spec)

    def _on_mesh(self, tree):
        """Arrays not yet on the whole mesh, replicated onto it; weights already there keep their layout."""
        shared, everywhere = NamedSharding(self.mesh, P()), set(self.mesh.devices.flat)
        return jax.tree.map(lambda x: x if isinstance(x, jax.Array) and x.sharding.device_set == everywhere
                            else _global(x, shared), tree)

    def _per_gop(self, items: list, sharding):
        """One entry per GOP position -> arrays split over ``gop``. Several processes: each fills
        only its own positions' parts (the other entries are placeholders)."""
        if not self.distributed:
            return jax.device_put(_stack(items), sharding)
        stacked = jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *items)
        return jax.tree.map(lambda v: jax.make_array_from_callback(v.shape, sharding, lambda index: v[index]),
                            stacked)

    def barrier(self, name: str) -> None:
        """Wait until every process reaches ``name`` (with one process: nothing to wait for)."""
        if self.distributed:
            multihost_utils.sync_global_devices(name)

    @staticmethod
    def share(values: list, wanted: Sequence[bool], shape: Sequence[int], dtype=np.uint8) -> list:
        """Several processes: each holds the arrays (``shape``, ``dtype``) of its own GOPs of a chunk
        (the others: None); -> the ``wanted`` ones on every process too (``process_allgather``)."""
        idx = [i for i, w in enumerate(wanted) if w]
        if not idx:
            return list(values)
        buf = np.zeros((len(idx),) + tuple(shape), dtype)
        have = np.zeros(len(idx), np.bool_)
        for j, i in enumerate(idx):
            if values[i] is not None:
                buf[j], have[j] = np.asarray(values[i]), True
        every = np.asarray(multihost_utils.process_allgather(buf)).reshape((-1,) + buf.shape)
        owned = np.asarray(multihost_utils.process_allgather(have)).reshape(-1, len(idx))
        out = list(values)
        for j, i in enumerate(idx):
            owners = np.nonzero(owned[:, j])[0]
            if len(owners) != 1:
                raise RuntimeError(
                    f"GOP position {i} of the chunk was decoded by {len(owners)} processes, expected one")
            out[i] = every[owners[0], j]
        return out

    @classmethod
    def share_bytes(cls, values: Sequence[bytes]) -> List[bytes]:
        """Several processes: each holds the byte strings of its own items (the others: ``b""``); ->
        every item on every process (``share`` of the lengths, then of the zero-padded bytes)."""
        owned = [None if not v else v for v in values]
        lengths = cls.share([None if v is None else np.int64(len(v)) for v in owned], [True] * len(owned), (),
                            np.int64)
        width = max([1] + [int(n) for n in lengths])
        padded = [None if v is None else np.pad(np.frombuffer(v, np.uint8), (0, width - len(v))) for v in owned]
        data = cls.share(padded, [True] * len(owned), (width,))
        return [bytes(d[:int(n)]) for d, n in zip(data, lengths, strict=True)]

    def agree(self, flags: np.ndarray) -> np.ndarray:
        """Several processes: the element-wise AND of every process's boolean ``flags`` (what all of
        them hold); one process: ``flags``."""
        flags = np.asarray(flags, np.bool_)
        if not self.distributed:
            return flags
        every = np.asarray(multihost_utils.process_allgather(flags)).reshape((-1,) + flags.shape)
        return np.asarray(every.all(axis=0))

    @staticmethod
    def _local_part(out, g: int):
        """GOP position g's result, from the shard this process holds."""
        def part(x):
            for s in x.addressable_shards:
                if s.index[0].start == g:
                    return s.data[0]
            raise KeyError(g)
        return jax.tree.map(part, out)

    @staticmethod
    def local(tree):
        """Device 0's copy of a replicated pytree (no copy is made); split leaves stay as they are."""
        def first(a):
            if isinstance(a, jax.Array) and len(a.sharding.device_set) > 1 and a.sharding.is_fully_replicated:
                return a.addressable_shards[0].data
            return a
        return jax.tree.map(first, tree)

    def map(self, key: Hashable, single: Callable, plain: Optional[Callable] = None):
        """-> ``run(shared, per_gop)``: ``single(shared, one)`` for each entry ``one`` of the list
        ``per_gop`` (one pytree per GOP of a chunk, all of one structure), one GOP per device;
        ``shared`` (weights, tables) is the same for all. ``run`` returns one output per GOP.

        The two kernels: with one GOP slot (a mesh of one device, or of weight shards only) the
        plain program ``plain`` (default ``jax.jit(single)``) runs each GOP; with more, one
        ``shard_map`` of ``single`` over the ``gop`` axis runs the chunk, its input specs derived
        from the two arguments (``shared`` replicated, ``per_gop`` split). ``key`` names ``single``
        for the bounded cache of compiled programs (equal keys: equal programs).
        """
        if self.size == 1:
            fn = plain or jax.jit(single)

            def run_each(shared, per_gop: Sequence):
                if self.mesh is not None:  # split weights: everything else goes on all devices too
                    shared, per_gop = self._on_mesh(shared), [self._on_mesh(one) for one in per_gop]
                else:  # a GOP's inputs committed to the device whatever made them (the encoder's target comes
                    # from the device, the decoder's is host zeros): an uncommitted argument is another program,
                    # so without this the decoder could not reuse the encoder's compiled (or cached) trajectory
                    per_gop = [jax.device_put(one, self.devices[0]) for one in per_gop]
                return [fn(shared, one) for one in per_gop]
            return run_each
        mesh = self.mesh
        assert mesh is not None  # more than one GOP slot: a device mesh
        program = _sharded_program(key, single, mesh)

        def run(shared, per_gop: Sequence):
            count = len(per_gop)
            if not 1 <= count <= self.size:
                raise ValueError(f"a chunk holds 1 to {self.size} GOPs, got {count}")
            padded = list(per_gop) + [per_gop[-1]] * (self.size - count)
            out = program(self._on_mesh(shared), self._per_gop(padded, NamedSharding(mesh, P(GOP_AXIS))))
            if not self.distributed:
                return [jax.tree.map(lambda x, g=g: x[g], out) for g in range(count)]
            return [self._local_part(out, g) if g in self.local_positions else None for g in range(count)]
        return run


MAX_PROGRAMS = 16  # compiled chunk programs kept (least recently used dropped): a few geometries and models
_PROGRAMS: "collections.OrderedDict[Hashable, Callable]" = collections.OrderedDict()


def _sharded_program(key, single, mesh):
    """The jitted shard_map of ``single(shared, one)`` with one GOP per device (cached on key and mesh)."""
    cache_key = (key, mesh.devices.shape, tuple(d.id for d in mesh.devices.flat))
    if cache_key in _PROGRAMS:
        _PROGRAMS.move_to_end(cache_key)
        return _PROGRAMS[cache_key]

    def body(shared, per_gop):
        one = jax.tree.map(lambda x: x[0], per_gop)
        return jax.tree.map(lambda x: x[None], single(shared, one))

    # Only ``gop`` is manual: inside a GOP, XLA partitions over ``model`` (split weights) itself.
    program = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(GOP_AXIS)), out_specs=P(GOP_AXIS),
                                    axis_names=frozenset({GOP_AXIS}), check_vma=False))
    _PROGRAMS[cache_key] = program
    while len(_PROGRAMS) > MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return program
