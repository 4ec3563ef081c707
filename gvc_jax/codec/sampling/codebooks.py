"""Shared seeded codebooks: atom generation and the encoder's top-M search
(docs/method_notes.md §Codebook noise selection, §Determinism).

For each (GOP, stochastic step, latent frame) encoder and decoder derive the same key with
:func:`frame_key` and thereby the same codebook of ``K`` atoms of dimension ``D`` (one flattened
latent frame). The encoder keeps the ``M`` atoms with the largest ``|<atom, residual>|`` and their
signs (:meth:`Codebook.search`); both sides rebuild the noise with :meth:`Codebook.combine`.
A codebook is never held whole: only ``K`` scalars exist during a search.

Kinds (``KINDS``; a stream header stores the index into it), one :class:`Codebook` subclass each,
registered in ``CODEBOOKS``; ``Codebook(kind, K, D)`` and :func:`get_codebook` build the right one:

- ``hadamard`` (default, :class:`HadamardCodebook`): atom k = ``(H_P[row(k)] * d)[:D]``, ``H_P``
  the Sylvester-ordered P x P Walsh-Hadamard matrix, ``P = next_pow2(D)``, ``d`` a seeded +-1 diagonal, ``row`` a seeded
  bijection of ``[0, P)`` built from invertible mod-2^n operations (O(1) per index). All K inner
  products cost one fast Walsh-Hadamard transform (O(P log P)); ``combine`` costs one more.
  Integer-exact up to the final rescale. When ``K > P`` the codebook is the union of
  ``B = ceil(K / P)`` randomised Hadamard bases: atom k belongs to basis ``b = k // P`` with its own
  seeded sign diagonal and row bijection (basis 0 is the single-basis codebook itself), and the
  search costs B transforms (O(K log P)).
- ``rademacher`` (:class:`RademacherCodebook`): atom k = +-1 from raw threefry bits of
  ``fold_in(key, k)``; 64 signs per threefry call (both output words). Streaming search
  (``lax.scan`` over blocks of atoms, shared with ``gaussian`` in ``_StreamedCodebook``).
- ``gaussian`` (:class:`GaussianCodebook`): atom k = ``jax.random.normal(fold_in(key, k), (D,))``
  (the published method, fp32) with the bits of ``jax_threefry_partitionable=True`` (JAX's
  default). Streaming search; a block of atoms is one fused, unrolled hash + normal transform
  (:func:`_threefry2x32`, :func:`_normal_from_bits`), the same integer and float ops as
  ``jax.random.normal`` (~3x faster than calling it on CPU, where JAX lowers the hash as a loop).

Atom k's values depend only on (key, kind, D, k): never on block sizes or on which indices are
requested together. Raw bits come from the threefry2x32 hash with explicit counters, so they do not
depend on the ``jax_threefry_partitionable`` flag either.

Across platforms: the hash is integer-exact, so Rademacher and Hadamard atoms are bit-identical
everywhere. Gaussian atoms add float ops: the uniform step is exact (see :func:`_normal_from_bits`),
``erf_inv``'s log1p / sqrt / polynomial are deterministic on one backend but another backend's
log1p may round differently in the last ulp (as for ``jax.random.normal`` itself). The encoder's
float inner products never reach the decoder: the stream stores the picks, and the decoder only
regenerates the picked atoms (``combine``).

Shapes: residual ``[D]`` float32; indices ``[n]`` / ``[M]`` int32; atoms ``[n, D]`` float32;
``z`` ``[D]`` float32. Every function is jit-able with the :class:`Codebook` static and vmap-able over
(key, residual) so a caller can ``jax.vmap`` over latent frames.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

# Format constant. Atom keys are fold_in(key, k) directly, so no block index enters the key chain;
# the constant bounds the search's internal block (which never changes atom values).
ATOM_BLOCK = 256

# Domain tags folded into the frame key for the Hadamard codebook's two seeded objects.
_TAG_HADAMARD_SIGNS = 0x5349474E  # "SIGN"
_TAG_HADAMARD_ROWS = 0x524F5753  # "ROWS"
_TAG_HADAMARD_BASIS = 0x42415353  # "BASS": key of basis b >= 1 is fold_in(key, TAG + b)
_ROW_ROUNDS = 4
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
# Target number of float elements in one streamed block of atoms (at most ATOM_BLOCK atoms a block).
_BLOCK_ELEMS = 1 << 20  # 4 MiB of float32: a block stays cache-sized (measured: ~1.5x faster at 720p than 2^23)


class CodebookError(ValueError):
    """Invalid codebook configuration or search request."""


def frame_key(seed, gop, step, frame) -> jax.Array:
    """Typed threefry key for one (GOP, step, latent frame): key(seed) -> fold_in gop, step, frame.

    All arguments may be Python ints or traced int scalars (usable inside lax.scan / vmap).
    """
    key = jax.random.key(seed, impl="threefry2x32")
    for v in (gop, step, frame):
        key = jax.random.fold_in(key, v)
    return key


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash (20 rounds), the function of ``threefry2x32_p``, in plain uint32 ops.

    Arguments broadcast against each other. Integer-exact, so its bits equal ``threefry2x32_p``'s on
    every backend (checked in the tests), but faster on CPU: JAX lowers the primitive there as a
    ``fori_loop`` over 5 groups of 4 rounds whose rotation amounts are loop data, so each group
    is a separate pass over the whole array with variable shifts (measured: 1.31 s of CPU for the
    1.5e8 words of one K = 16384, D = 9216 codebook); unrolled with constant rotations it is one
    fused, vectorised loop (0.21 s).
    """
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x1 = x1 + ks[0]
    x2 = x2 + ks[1]
    for i in range(5):
        for rot in _THREEFRY_ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << jnp.uint32(rot)) | (x2 >> jnp.uint32(32 - rot))
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x1, x2


def _threefry_words(key: jax.Array, n_words: int) -> jax.Array:
    """[n_words] uint32 raw threefry bits of a typed key; word w depends only on (key, w).

    Counter c = (0, w // 2) hashed once gives words 2c and 2c+1 (both threefry outputs): the words of
    :func:`_threefry_words_batch`, from the unrolled :func:`_threefry2x32`. For the few words of one
    key (the Hadamard tables): the primitive's CPU loop costs more to compile than these words cost to
    hash (measured: the tiny T2V trajectory's compile 4.0 -> 3.4 CPU-s). The barrier stores the words,
    so that a consumer of single bits does not recompute the hash for each of them.
    """
    kd = jax.random.key_data(key)
    counts = jnp.arange((n_words + 1) // 2, dtype=jnp.uint32)
    b1, b2 = _threefry2x32(kd[0], kd[1], jnp.zeros_like(counts), counts)
    return jax.lax.optimization_barrier(jnp.stack([b1, b2], axis=-1).reshape(-1)[:n_words])


def _threefry_words_batch(kd: jax.Array, n_words: int) -> jax.Array:
    """[n, n_words] uint32: :func:`_threefry_words` of n raw keys ``kd`` [n, 2] in one hash call."""
    n_calls = (n_words + 1) // 2
    counts = jnp.arange(n_calls, dtype=jnp.uint32)[None, :]
    # The primitive, not the unrolled _threefry2x32: its CPU lowering is a loop, so XLA stores the
    # words; the unrolled hash would be fused into each word's 32 per-bit consumers and recomputed
    # for every bit (measured: Rademacher search 0.18 s -> 0.28 s at K = 16384, D = 9216).
    b1, b2 = threefry2x32_p.bind(kd[:, 0:1], kd[:, 1:2], jnp.zeros_like(counts), counts)
    return jnp.stack([b1, b2], axis=-1).reshape(kd.shape[0], -1)[:, :n_words]


def _normal_bits(kd: jax.Array, d: int) -> jax.Array:
    """[n, d] uint32: the bits ``jax.random.normal(key, (d,))`` draws for raw keys ``kd`` [n, 2].

    JAX's partitionable threefry scheme (its default): element j hashes the counter (0, j) and
    keeps the xor of the two output words. Explicit here, so it holds whatever the
    ``jax_threefry_partitionable`` flag says.
    """
    counts = jnp.arange(d, dtype=jnp.uint32)[None, :]
    b1, b2 = _threefry2x32(kd[:, 0:1], kd[:, 1:2], jnp.zeros_like(counts), counts)
    return b1 ^ b2


# jax.random.normal's float32 transform: uniform on [nextafter(-1, 0), 1), then sqrt(2) erfinv.
_NORMAL_LO = np.nextafter(np.float32(-1.0), np.float32(0.0), dtype=np.float32)
_NORMAL_SPAN = np.float32(1.0) - _NORMAL_LO  # float32: rounds to exactly 2.0
_SQRT2 = np.array(np.sqrt(2), np.float32)


def _normal_from_bits(bits: jax.Array) -> jax.Array:
    """float32 N(0, 1) from uint32 bits, op for op ``jax.random.normal``'s transform.

    The uniform step is exact (23 random mantissa bits; the span is 2.0, so ``u * span + lo`` has
    one rounding with or without a fused multiply-add). The only inexact ops are those of
    ``lax.erf_inv`` (log1p, sqrt, a degree-9 polynomial), the very ops ``jax.random.normal`` runs.
    """
    mant = (bits >> jnp.uint32(32 - 23)) | jnp.uint32(0x3F800000)
    u01 = jax.lax.bitcast_convert_type(mant, jnp.float32) - jnp.float32(1.0)
    u = jax.lax.max(_NORMAL_LO, u01 * _NORMAL_SPAN + _NORMAL_LO)
    return jax.lax.mul(_SQRT2, jax.lax.erf_inv(u))


def standard_normal(key: jax.Array, shape) -> jax.Array:
    """``jax.random.normal(key, shape)`` (float32) bit for bit, with the bits of JAX's default
    partitionable threefry whatever ``jax_threefry_partitionable`` says: the unrolled hash and the
    normal transform (:func:`_normal_bits`, :func:`_normal_from_bits`). Compiles in a fraction of
    ``jax.random.normal``'s time on CPU (its hash is a loop there)."""
    size = int(np.prod(shape))
    return _normal_from_bits(_normal_bits(jax.random.key_data(key)[None, :], size)).reshape(shape)


def _sign_bits(key: jax.Array, n: int) -> jax.Array:
    """[n] bool: bit j of the threefry word stream of ``key`` (True -> +1, False -> -1)."""
    return _bits(_threefry_words(key, (n + 31) // 32), n)


def _sign_bits_batch(kd: jax.Array, n: int) -> jax.Array:
    """[m, n] bool: :func:`_sign_bits` of m raw keys ``kd`` [m, 2]."""
    return _bits(_threefry_words_batch(kd, (n + 31) // 32), n)


def _bits(words: jax.Array, n: int) -> jax.Array:
    """[..., n] bool: the first n bits of the words [..., W] uint32, each word's lowest bit first."""
    bits = (words[..., :, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return bits.reshape(*words.shape[:-1], -1)[..., :n].astype(bool)


def _atom_keys(key: jax.Array, idx: jax.Array) -> jax.Array:
    """[n, 2] uint32 raw data of the atom keys ``fold_in(key, k)`` for int indices ``idx`` [n]."""
    return jax.vmap(lambda k: jax.random.key_data(jax.random.fold_in(key, k)))(idx)


def fwht(x: jax.Array) -> jax.Array:
    """Unnormalised fast Walsh-Hadamard transform over the last axis (length P = 2^n).

    [..., P] -> [..., P] = x @ H_P with H_P the symmetric Sylvester-ordered Hadamard matrix.
    """
    p = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    while h < p:
        y = x.reshape(*lead, p // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, p)
        h *= 2
    return x


def _exact_sum_f32(v: jax.Array) -> jax.Array:
    """Exact integer sum of int32 values 0 <= v < 2^24 ([D]), returned as a float32 scalar.

    Chunks of 128 are summed in int32 (< 2^31), the chunk sums are split into 16-bit limbs and
    summed again in int32; integer addition is associative, so the result does not depend on the
    reduction order of any backend. One rounding: hi * 2^16 + lo in float32.
    """
    d = v.shape[-1]
    n = -(-d // 128) * 128
    chunks = jnp.sum(jnp.pad(v, (0, n - d)).reshape(-1, 128), axis=-1)
    hi = jnp.sum(chunks >> 16)
    lo = jnp.sum(chunks & 0xFFFF)
    return hi.astype(jnp.float32) * 65536.0 + lo.astype(jnp.float32)


def _unit_std_exact(z: jax.Array) -> jax.Array:
    """Rescale an integer-valued float32 vector [D] with |z| < 2^12 to unit population std.

    The moments are exact integer sums (backend-independent); a few scalar float ops follow.
    All-zero input -> zeros.
    """
    zi = z.astype(jnp.int32)
    d = z.shape[-1]
    s1 = jnp.sum(zi).astype(jnp.float32)  # |s1| <= D * M, exact in int32
    s2 = _exact_sum_f32(zi * zi)
    mean = s1 / d
    var = jnp.maximum(s2 / d - mean * mean, 0.0)
    std = jnp.sqrt(var)
    safe = jnp.where(std > 0, std, 1.0)
    return jnp.where(std > 0, z / safe, jnp.zeros_like(z))


def _unit_std_float(z: jax.Array) -> jax.Array:
    """Rescale a float32 vector [D] to unit population std; all-zero (std 0) input -> zeros."""
    std = jnp.std(z, axis=-1)
    safe = jnp.where(std > 0, std, 1.0)
    return jnp.where(std > 0, z / safe, jnp.zeros_like(z))


def _signs_of(ip: jax.Array) -> jax.Array:
    return jnp.where(ip >= 0, 1.0, -1.0).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Codebook:
    """K seeded atoms of dimension D of one kind. Hashable: pass it as a static jit argument.

    ``Codebook(kind, K, D)`` builds the class registered for ``kind`` in ``CODEBOOKS``; instances
    with equal (kind, K, D) are equal and hash alike. Subclasses implement ``atoms``,
    ``inner_products``, ``_search`` (top-M after the checks of ``search``) and ``_combine``.
    """

    kind: str
    K: int
    D: int

    def __new__(cls, kind=None, *args, **kwargs):
        return super().__new__(_codebook_class(kind) if cls is Codebook else cls)

    def __post_init__(self):
        if _codebook_class(self.kind) is not type(self):
            raise CodebookError(f"{type(self).__name__} is not the codebook of kind {self.kind!r}")
        if int(self.D) < 1:
            raise CodebookError(f"codebook dimension D must be >= 1, got {self.D}")
        if int(self.K) < 1:
            raise CodebookError(f"codebook size K must be >= 1, got {self.K}")
        if int(self.K) > 2**31 - 1:
            raise CodebookError(f"codebook size K = {self.K} exceeds the int32 index range")

    # ------------------------------------------------------------------ static geometry
    @property
    def P(self) -> int:
        """Hadamard order: next power of two >= D."""
        return _next_pow2(self.D)

    @property
    def block(self) -> int:
        """Internal streaming block (atoms per scan step); never changes atom values."""
        b = max(1, min(ATOM_BLOCK, _BLOCK_ELEMS // max(1, self.D)))
        return 1 << (b.bit_length() - 1)  # power of two <= b

    @property
    def bases(self) -> int:
        """Number of randomised Hadamard bases (hadamard kind): ceil(K / P)."""
        return -(-self.K // self.P)

    # ------------------------------------------------------------------ public API
    def atoms(self, key, indices) -> jax.Array:
        """Atoms for int indices [n] -> [n, D] float32 (+-1, or N(0,1) for gaussian)."""
        raise NotImplementedError

    def inner_products(self, key, residual) -> jax.Array:
        """[K] float32 <atom_k, residual> (materialises K scalars; for tests / small K)."""
        raise NotImplementedError

    def prepare(self, key):
        """What ``search`` and ``combine`` derive from ``key`` alone, computed once: pass the result in
        place of the key to both (a coded step searches and combines with one key, and its compiled
        program then holds one copy of that work). A pytree; the key itself for the streamed kinds."""
        return key

    def search(self, key, residual, M: int) -> tuple[jax.Array, jax.Array]:
        """Top-M atoms by |<atom, residual>|: residual [D] -> (indices [M] int32, signs [M] float32).
        ``key``: a frame key or its :meth:`prepare`.

        Ordered by decreasing |inner product|, ties by lower index; sign(0) = +1.
        """
        M = int(M)
        if not 1 <= M <= self.K:
            raise CodebookError(f"search needs 1 <= M <= K = {self.K}, got M = {M}")
        return self._search(key, residual, M)

    def combine(self, key, indices, coeffs) -> jax.Array:
        """z [D] = sum_k coeffs_k atom_k rescaled to unit population std (all-zero coeffs -> zeros).

        indices [M] int32, coeffs [M] float32 in {-1, 0, +1}; 0 marks an unused slot. ``key``: a frame
        key or its :meth:`prepare`.
        """
        indices = jnp.asarray(indices, dtype=jnp.int32)
        return self._combine(key, indices, jnp.asarray(coeffs, dtype=jnp.float32))

    def _search(self, key, residual, M: int) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError

    def _combine(self, key, indices, coeffs) -> jax.Array:
        raise NotImplementedError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HadamardTables:
    """A Hadamard frame key's derived tables (:meth:`HadamardCodebook.prepare`)."""

    signs: jax.Array   # [bases, P] float32 +-1 sign diagonals
    rows: jax.Array    # [bases, P] int32: basis b's row of its atom b * P + i


@dataclasses.dataclass(frozen=True)
class HadamardCodebook(Codebook):
    """Union of ``bases`` randomised Walsh-Hadamard bases: one FWHT per basis gives all K products."""

    def _basis_keys(self, key):
        """[bases] keys: basis 0's is ``key`` itself, basis b >= 1's ``fold_in(key, TAG + b)``.

        The bases are then handled by one ``vmap`` (not a Python loop), so the compiled program has
        the size of a single basis whatever ``K / P`` is (a small latent frame and K = 16384 gave
        16 unrolled transforms and a minute of XLA compile on CPU); the values are unchanged.
        """
        b = jnp.arange(self.bases, dtype=jnp.uint32)
        folded = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(key, _TAG_HADAMARD_BASIS + i)))(b)
        data = jnp.where((b == 0)[:, None], jax.random.key_data(key)[None, :], folded)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))

    def _had_signs(self, key) -> jax.Array:
        """[P] float32 +-1 sign diagonal."""
        bits = _sign_bits(jax.random.fold_in(key, _TAG_HADAMARD_SIGNS), self.P)
        return jnp.where(bits, 1.0, -1.0).astype(jnp.float32)

    def _had_rows(self, key, k: jax.Array) -> jax.Array:
        """Seeded bijection of [0, P): int indices [n] -> uint32 rows [n].

        Rounds of: add seeded constant, xor-shift right, multiply by seeded odd constant,
        xor-shift left, all mod 2^n (n = log2 P). Each operation is invertible mod 2^n.
        """
        n = self.P.bit_length() - 1
        mask = jnp.uint32((1 << n) - 1)
        consts = _threefry_words(jax.random.fold_in(key, _TAG_HADAMARD_ROWS), 2 * _ROW_ROUNDS)
        sr = max(1, (n + 1) // 2)
        sl = max(1, n // 3)
        x = k.astype(jnp.uint32) & mask
        for r in range(_ROW_ROUNDS):
            add_c, mul_c = consts[2 * r], consts[2 * r + 1] | jnp.uint32(1)
            x = (x + add_c) & mask
            x = x ^ (x >> sr)
            x = (x * mul_c) & mask
            x = x ^ ((x << sl) & mask)
        return x

    def atoms(self, key, indices) -> jax.Array:
        indices = jnp.asarray(indices, dtype=jnp.int32)
        cols = jnp.arange(self.D, dtype=jnp.uint32)
        basis = indices // self.P
        keys = self._basis_keys(key)
        signs = jax.vmap(self._had_signs)(keys)[:, : self.D]  # [bases, D], once per basis
        rows = jax.vmap(lambda kb: self._had_rows(kb, indices - basis * self.P))(keys)  # [bases, n]
        row = jnp.take_along_axis(rows, basis[None, :], axis=0)[0]
        parity = jax.lax.population_count(row[:, None] & cols[None, :]) & jnp.uint32(1)
        return jnp.where(parity == 0, 1.0, -1.0).astype(jnp.float32) * signs[basis]

    def prepare(self, key) -> "HadamardTables":
        """Every basis's sign diagonal and whole row bijection (``HadamardTables``; integers, so using
        them in place of the key changes no value)."""
        if isinstance(key, HadamardTables):
            return key
        keys = self._basis_keys(key)
        every_row = jnp.arange(self.P, dtype=jnp.uint32)
        return HadamardTables(jax.vmap(self._had_signs)(keys),
                              jax.vmap(lambda kb: self._had_rows(kb, every_row))(keys).astype(jnp.int32))

    def inner_products(self, key, residual) -> jax.Array:
        """[K] inner products via one FWHT of d_b * pad(residual) per basis b (vmapped over b)."""
        r = jnp.pad(residual.astype(jnp.float32), (0, self.P - self.D))

        def basis_products(signs, rows):
            return fwht(signs * r)[rows]
        tables = self.prepare(key)
        return jax.vmap(basis_products)(tables.signs, tables.rows).reshape(-1)[: self.K]

    def _search(self, key, residual, M: int):
        ips = self.inner_products(key, residual)
        _, idx = jax.lax.top_k(jnp.abs(ips), M)
        return idx.astype(jnp.int32), _signs_of(ips[idx])

    def _combine(self, key, indices, coeffs):
        basis = indices // self.P
        tables = self.prepare(key)

        def basis_noise(b, signs, rows):
            # an index of another basis reads any row: its coefficient there is 0
            at = rows[(indices - b * self.P) & (self.P - 1)]
            v = jnp.zeros((self.P,), jnp.float32).at[at].add(jnp.where(basis == b, coeffs, 0.0))
            return fwht(v) * signs  # integer-valued: exact in float32, as is their sum
        z = jnp.sum(jax.vmap(basis_noise)(jnp.arange(self.bases, dtype=jnp.int32), tables.signs, tables.rows), axis=0)
        z = z[: self.D]
        return _unit_std_exact(z) if coeffs.shape[0] < 4096 else _unit_std_float(z)


@dataclasses.dataclass(frozen=True)
class _StreamedCodebook(Codebook):
    """Atom k generated alone from ``fold_in(key, k)``; searched by a ``lax.scan`` over blocks.

    A block's atoms come from one fused hash over [block, D] counters (``_block_atoms``), so the
    search and ``atoms`` run the very same ops; only one block of atoms exists at a time.
    """

    def _block_atoms(self, kd, idx) -> jax.Array:
        """[n, D] float32 atoms for raw atom keys ``kd`` [n, 2] (``_atom_keys``) of indices idx [n]."""
        raise NotImplementedError

    def _block_ips(self, key, idx, residual) -> jax.Array:
        """[B] inner products of the atoms idx [B] with residual [D]."""
        a = self._block_atoms(_atom_keys(key, idx), idx)
        return jnp.dot(a, residual, precision=jax.lax.Precision.HIGHEST)

    def _rescale(self, z, n: int) -> jax.Array:
        """The sum z [D] of n signed atoms at unit population std."""
        return _unit_std_float(z)

    def _stream(self, key, residual, body, init):
        """Scan over ceil(K / block) blocks; body(carry, idx [B] int32, valid [B] bool, ips [B])."""
        b = min(self.block, _next_pow2(self.K))
        n_blocks = -(-self.K // b)
        r = residual.astype(jnp.float32)

        def step(carry, blk):
            idx = blk * b + jnp.arange(b, dtype=jnp.int32)
            valid = idx < self.K
            ips = self._block_ips(key, jnp.where(valid, idx, 0), r)
            return body(carry, idx, valid, ips)

        return jax.lax.scan(step, init, jnp.arange(n_blocks, dtype=jnp.int32))

    def atoms(self, key, indices) -> jax.Array:
        indices = jnp.asarray(indices, dtype=jnp.int32).reshape(-1)
        return self._block_atoms(_atom_keys(key, indices), indices)

    def inner_products(self, key, residual) -> jax.Array:
        def body(carry, idx, valid, ips):
            return carry, ips

        _, ips = self._stream(key, residual, body, ())
        return ips.reshape(-1)[: self.K]

    def _search(self, key, residual, M: int):
        def body(carry, idx, valid, ips):
            best_s, best_i, best_ip = carry
            score = jnp.where(valid, jnp.abs(ips), -jnp.inf)
            # Running entries have lower indices than this block's; top_k keeps the lower
            # position first among ties, so ties resolve to the lower atom index.
            cat_s = jnp.concatenate([best_s, score])
            cat_i = jnp.concatenate([best_i, idx])
            cat_ip = jnp.concatenate([best_ip, ips])
            s, pos = jax.lax.top_k(cat_s, M)
            return (s, cat_i[pos], cat_ip[pos]), None

        init = (jnp.full((M,), -jnp.inf, jnp.float32), jnp.zeros((M,), jnp.int32), jnp.zeros((M,), jnp.float32))
        (_, idx, ips), _ = self._stream(key, residual, body, init)
        return idx, _signs_of(ips)

    def _combine(self, key, indices, coeffs):
        z = jnp.sum(coeffs[:, None] * self.atoms(key, indices), axis=0)
        return self._rescale(z, coeffs.shape[0])


@dataclasses.dataclass(frozen=True)
class GaussianCodebook(_StreamedCodebook):
    """Atom k = ``jax.random.normal(fold_in(key, k), (D,))`` with JAX's (default) partitionable bits.

    Computed as :func:`_normal_from_bits` of :func:`_normal_bits`: the same integer hash and the same
    float ops, unrolled and fused over a whole block of atoms (tests check the bits against
    ``jax.random.normal``). The only float ops are ``erf_inv``'s (see :func:`_normal_from_bits`):
    on one backend they are deterministic; another backend's log1p may differ in the last ulp,
    exactly as ``jax.random.normal`` itself may.
    """

    def _block_atoms(self, kd, idx) -> jax.Array:
        return _normal_from_bits(_normal_bits(kd, self.D))


@dataclasses.dataclass(frozen=True)
class RademacherCodebook(_StreamedCodebook):
    """Atom k = +-1 from the raw threefry bits of ``fold_in(key, k)``; integer-exact sums."""

    def _block_atoms(self, kd, idx) -> jax.Array:
        return jnp.where(_sign_bits_batch(kd, self.D), 1.0, -1.0).astype(jnp.float32)

    def _block_ips(self, key, idx, residual) -> jax.Array:
        bits = _sign_bits_batch(_atom_keys(key, idx), self.D)
        return jnp.sum(jnp.where(bits, residual[None, :], -residual[None, :]), axis=-1)

    def _rescale(self, z, n: int) -> jax.Array:
        return _unit_std_exact(z) if n < 4096 else _unit_std_float(z)


# Kind name -> class. The order is a format constant: a stream header stores the index into KINDS.
CODEBOOKS = {"hadamard": HadamardCodebook, "gaussian": GaussianCodebook, "rademacher": RademacherCodebook}
KINDS = tuple(CODEBOOKS)


def _codebook_class(kind) -> type:
    """The registered :class:`Codebook` subclass of ``kind`` (raises CodebookError if unknown)."""
    cls = CODEBOOKS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise CodebookError(f"unknown codebook kind {kind!r}; expected one of {KINDS}")
    return cls


def get_codebook(kind: str, K: int, D: int) -> Codebook:
    """Validated :class:`Codebook` (raises CodebookError, a ValueError, on bad kind / K / D)."""
    if not isinstance(kind, str):
        raise CodebookError(f"codebook kind must be a string, got {type(kind).__name__}")
    return _codebook_class(kind)(kind=kind, K=int(K), D=int(D))
