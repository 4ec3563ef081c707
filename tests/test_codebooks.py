"""Tests for gvc_jax.codec.sampling.codebooks: atom determinism, search vs brute force, combine, goldens."""
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.extend.random import threefry2x32_p

from gvc_jax.codec.sampling import codebooks as cbm
from gvc_jax.codec.sampling import multires
from gvc_jax.codec.sampling.codebooks import ATOM_BLOCK, KINDS, Codebook, frame_key, get_codebook

KEY = frame_key(1234, 0, 1, 2)
# (kind, K, D): K not a multiple of the streaming block where the kind allows it.
# ("hadamard", 40, 64): one basis (K < P), D = P (no padding); ("hadamard", 200, 48): K > P = 64, a
# union of 4 randomised Hadamard bases (the last one partial), D < P (padded). D = 300 (P = 512):
# the golden hashes and the dense-matrix check.
CASES = [("hadamard", 40, 64), ("rademacher", 600, 100), ("gaussian", 600, 100), ("hadamard", 200, 48)]


# Jitted entry points shared by all tests (the Codebook is static): one compile per configuration.
ATOMS = jax.jit(lambda cb, k, i: cb.atoms(k, i), static_argnums=0)
IPS = jax.jit(lambda cb, k, r: cb.inner_products(k, r), static_argnums=0)
SEARCH = jax.jit(lambda cb, k, r, m: cb.search(k, r, m), static_argnums=(0, 3))
COMBINE = jax.jit(lambda cb, k, i, c: cb.combine(k, i, c), static_argnums=0)
SIGNS = jax.jit(lambda cb, k: cb._had_signs(k), static_argnums=0)
ROWS = jax.jit(lambda cb, k, i: cb._had_rows(k, i), static_argnums=0)
FWHT = jax.jit(cbm.fwht)


def _residual(d, seed=0):
    return jax.random.normal(jax.random.key(seed, impl="threefry2x32"), (d,), jnp.float32)


def _dense_ips(cb, key, r):
    a = np.asarray(ATOMS(cb, key, jnp.arange(cb.K, dtype=jnp.int32)), np.float64)
    return a @ np.asarray(r, np.float64)


@pytest.mark.parametrize("kind,K,D", CASES)
def test_atoms_independent_of_batching(kind, K, D):
    cb = get_codebook(kind, K, D)
    n = min(K, ATOM_BLOCK)
    atoms_jit = jax.jit(cb.atoms)
    all_at_once = np.asarray(atoms_jit(KEY, jnp.arange(n, dtype=jnp.int32)))
    singles = np.concatenate([np.asarray(atoms_jit(KEY, jnp.array([k], jnp.int32))) for k in range(0, n, 17)])
    np.testing.assert_array_equal(singles, all_at_once[::17])
    groups = np.concatenate([np.asarray(atoms_jit(KEY, jnp.arange(s, s + 7, dtype=jnp.int32)))
                             for s in range(0, n - 7, 7)])
    np.testing.assert_array_equal(groups, all_at_once[: groups.shape[0]])
    # out of order / scattered request
    perm = np.random.default_rng(0).permutation(n)[:31].astype(np.int32)
    np.testing.assert_array_equal(np.asarray(ATOMS(cb, KEY, jnp.asarray(perm))), all_at_once[perm])
    vals = np.unique(all_at_once)
    if kind == "gaussian":
        assert abs(all_at_once.mean()) < 0.05 and abs(all_at_once.std() - 1) < 0.05
    else:
        np.testing.assert_array_equal(vals, [-1.0, 1.0])


def test_gaussian_atoms_are_jax_normal():
    cb = get_codebook("gaussian", 64, 200)
    for k in (0, 5, 63):
        ref = jax.random.normal(jax.random.fold_in(KEY, k), (200,), jnp.float32)
        np.testing.assert_array_equal(np.asarray(ATOMS(cb, KEY, jnp.array([k]))[0]), np.asarray(ref))


def test_gaussian_block_generation_is_bitwise_jax_normal():
    """The fused block generator (hash + uniform + erf_inv over [block, D]) is jax.random.normal bit
    for bit, over enough values to cover erf_inv's tail branch (|x| > ~2.9)."""
    n, d = 96, 2000
    cb = get_codebook("gaussian", 4096, d)
    idx = jnp.arange(n, dtype=jnp.int32) * 37 + 5
    ref = jax.jit(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(KEY, k), (d,), jnp.float32)))(idx)
    ref = np.asarray(ref)
    assert (np.abs(ref) > 3.0).sum() > 100  # the w >= 5 branch of erf_inv is exercised
    np.testing.assert_array_equal(np.asarray(ATOMS(cb, KEY, idx)).view(np.uint32), ref.view(np.uint32))
    # the search's own block, with a one-hot residual, returns exactly atom k's coordinate j
    for j in (0, 1, d - 1):
        r = jnp.zeros((d,), jnp.float32).at[j].set(1.0)
        ips = np.asarray(IPS(cb, KEY, r))[np.asarray(idx)]
        np.testing.assert_array_equal(ips, ref[:, j])


def test_gaussian_atoms_do_not_depend_on_the_partitionable_flag():
    """The counters are explicit, so the other setting of jax_threefry_partitionable gives the same atoms."""
    cb = get_codebook("gaussian", 64, 300)
    on = np.asarray(ATOMS(cb, KEY, jnp.arange(8, dtype=jnp.int32)))
    with jax.threefry_partitionable(False):
        off = np.asarray(jax.jit(cb.atoms)(KEY, jnp.arange(8, dtype=jnp.int32)))
    np.testing.assert_array_equal(off, on)


def test_standard_normal_is_jax_normal_whatever_the_partitionable_flag():
    """The trajectory's initial noise and the stage transitions' band noise: ``jax.random.normal``'s
    values bit for bit (JAX's default bits), under either setting of jax_threefry_partitionable."""
    for shape in [(3, 6, 8, 4), (5,), (2, 3, 7)]:
        ref = np.asarray(jax.random.normal(KEY, shape, jnp.float32))
        np.testing.assert_array_equal(np.asarray(jax.jit(cbm.standard_normal, static_argnums=1)(KEY, shape)), ref)
        with jax.threefry_partitionable(False):
            np.testing.assert_array_equal(np.asarray(jax.jit(cbm.standard_normal, static_argnums=1)(KEY, shape)), ref)
    band = np.asarray(jax.jit(multires.transition_noise, static_argnums=1)(KEY, (3, 4, 4, 8)))
    for f in range(3):
        np.testing.assert_array_equal(band[f], np.asarray(jax.random.normal(jax.random.fold_in(KEY, f), (4, 4, 8))))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (1, 1000)])
def test_unrolled_threefry_equals_the_primitive(shape):
    """_threefry2x32 (unrolled, constant rotations) is the threefry2x32 primitive's function, with
    broadcasting keys as the streamed search uses them."""
    rng = np.random.default_rng(7)
    k1, k2 = (jnp.asarray(rng.integers(0, 2**32, size=shape[:1] + (1,) * (len(shape) - 1),
                                       dtype=np.uint64).astype(np.uint32))
              for _ in range(2))
    x1, x2 = (jnp.asarray(rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32)) for _ in range(2))
    got = jax.jit(cbm._threefry2x32)(k1, k2, x1, x2)
    ref = jax.jit(lambda *a: threefry2x32_p.bind(*a))(k1, k2, x1, x2)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    # the published Threefry-2x32 (20 rounds) known-answer vector (Random123's kat_vectors)
    out = jax.jit(cbm._threefry2x32)(*(jnp.uint32(v) for v in (0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3)))
    assert [int(v) for v in out] == [0xC4923A9C, 0x483DF7A0]


def test_rademacher_bits_are_raw_threefry():
    # word 2c / 2c+1 of atom k are the two outputs of threefry2x32(fold_in(key, k), (0, c));
    # jax.random.bits (partitionable) returns their xor.
    cb = get_codebook("rademacher", 8, 96)
    a = np.asarray(ATOMS(cb, KEY, jnp.arange(8)))
    for k in range(8):
        ak = jax.random.fold_in(KEY, k)
        x = np.asarray(jax.random.bits(ak, (2,), jnp.uint32))
        bits = (a[k] > 0).astype(np.uint64)
        words = [int(sum(int(bits[32 * w + j]) << j for j in range(32))) for w in range(3)]
        assert words[0] ^ words[1] == int(x[0])


@pytest.mark.parametrize("kind,K,D", CASES[1:3])  # hadamard has no streamed blocks
def test_search_block_size_invariant(kind, K, D, monkeypatch):
    r = _residual(D, 1)
    cb = get_codebook(kind, K, D)
    ref_i, ref_s = SEARCH(cb, KEY, r, 16)
    ref_ip = np.asarray(IPS(cb, KEY, r))
    for elems, block in ((D, 1), (7 * D, 4)):  # internal blocks of 1 and 4 atoms (default: 256)
        monkeypatch.setattr(cbm, "_BLOCK_ELEMS", elems)
        cb2 = Codebook(kind, K, D)
        assert cb2.block == block
        # fresh jit wrappers: cb2 == cb, so the shared cached executables would hide the new block
        i, s = jax.jit(lambda k, x, cb2=cb2: cb2.search(k, x, 16))(KEY, r)
        np.testing.assert_array_equal(np.asarray(i), np.asarray(ref_i))
        np.testing.assert_array_equal(np.asarray(s), np.asarray(ref_s))
        np.testing.assert_allclose(np.asarray(jax.jit(cb2.inner_products)(KEY, r)), ref_ip, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind,K,D,M", [c + (16,) for c in CASES]
                         + [("hadamard", 64, 48, 1), ("rademacher", 1024, 48, 1), ("gaussian", 64, 48, 64)])
def test_search_equals_brute_force(kind, K, D, M):
    cb = get_codebook(kind, K, D)
    r = _residual(D, 2)
    ip = _dense_ips(cb, KEY, r)
    np.testing.assert_allclose(np.asarray(IPS(cb, KEY, r)), ip, rtol=1e-5, atol=1e-4)
    ref = np.argsort(-np.abs(ip), kind="stable")[:M]
    idx, signs = SEARCH(cb, KEY, r, M)
    assert idx.dtype == jnp.int32 and signs.dtype == jnp.float32 and idx.shape == (M,)
    np.testing.assert_array_equal(np.asarray(idx), ref)
    np.testing.assert_array_equal(np.asarray(signs), np.where(ip[ref] >= 0, 1.0, -1.0))


@pytest.mark.parametrize("kind,K,D", CASES)
def test_search_ties_lower_index_first(kind, K, D):
    cb = get_codebook(kind, K, D)
    idx, signs = SEARCH(cb, KEY, jnp.zeros((D,), jnp.float32), 10)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(10))
    np.testing.assert_array_equal(np.asarray(signs), np.ones(10))


@pytest.mark.parametrize("D", [64, 300])  # no padding; padding (P = 512)
def test_hadamard_matches_dense_matrix(D):
    cb = get_codebook("hadamard", 40, D)
    P = cb.P
    H = scipy.linalg.hadamard(P).astype(np.float64)
    d = np.asarray(SIGNS(cb, KEY), np.float64)
    rows = np.asarray(ROWS(cb, KEY, jnp.arange(cb.K)), np.int64)
    dense = (H[rows] * d[None, :])[:, :D]
    np.testing.assert_array_equal(np.asarray(ATOMS(cb, KEY, jnp.arange(cb.K))), dense)
    r = _residual(D, 3)
    np.testing.assert_allclose(np.asarray(IPS(cb, KEY, r)), dense @ np.asarray(r, np.float64),
                               rtol=1e-5, atol=1e-4)
    x = np.asarray(_residual(P, 4), np.float64)
    np.testing.assert_allclose(np.asarray(FWHT(jnp.asarray(x, jnp.float32))), H @ x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("P", [1, 2, 4, 8, 64, 1 << 18])
def test_hadamard_row_map_is_bijection(P):
    cb = get_codebook("hadamard", 1, P)
    for key in (KEY, frame_key(7, 3, 0, 1)):
        rows = np.asarray(ROWS(cb, key, jnp.arange(P)))
        assert rows.max() < P
        assert np.unique(rows).size == P
    if P >= 64:  # seeded: another key gives another map
        a = np.asarray(ROWS(cb, KEY, jnp.arange(64)))
        b = np.asarray(ROWS(cb, frame_key(7, 3, 0, 1), jnp.arange(64)))
        assert (a != b).any()


@pytest.mark.parametrize("D", [48, 64])  # padding; no padding
def test_hadamard_atoms_distinct_full_codebook(D):
    cb = get_codebook("hadamard", _p := cbm._next_pow2(D), D)
    a = np.asarray(ATOMS(cb, KEY, jnp.arange(_p)))
    assert np.unique(a, axis=0).shape[0] == _p
    assert np.unique(np.concatenate([a, -a]), axis=0).shape[0] == 2 * _p  # also distinct up to sign


@pytest.mark.parametrize("kind,K,D", CASES)
def test_combine(kind, K, D):
    cb = get_codebook(kind, K, D)
    def comb(k, i, c):
        return COMBINE(cb, k, i, c)
    idx, signs = SEARCH(cb, KEY, _residual(D, 5), 16)
    z = np.asarray(comb(KEY, idx, signs))
    assert abs(float(z.std()) - 1.0) < 1e-5
    a = np.asarray(ATOMS(cb, KEY, idx), np.float64)
    ref = np.asarray(signs, np.float64) @ a
    np.testing.assert_allclose(z, ref / ref.std(), rtol=1e-5, atol=1e-5)
    # unused slots (coefficient 0, any valid index) are ignored
    idx2 = jnp.concatenate([idx, jnp.array([0, 3, int(idx[0])], jnp.int32)])
    sg2 = jnp.concatenate([signs, jnp.zeros(3, jnp.float32)])
    z2 = np.asarray(comb(KEY, idx2, sg2))
    # order of (index, coeff) pairs
    perm = np.random.default_rng(1).permutation(idx2.shape[0])
    z3 = np.asarray(comb(KEY, idx2[perm], sg2[perm]))
    if kind == "gaussian":
        np.testing.assert_allclose(z2, z, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z3, z, rtol=1e-5, atol=1e-5)
    else:  # integer-exact before the rescale
        np.testing.assert_array_equal(z2, z)
        np.testing.assert_array_equal(z3, z)
    zero = np.asarray(comb(KEY, idx, jnp.zeros_like(signs)))
    np.testing.assert_array_equal(zero, np.zeros(D, np.float32))


@pytest.mark.parametrize("kind,K,D", CASES)
def test_a_prepared_key_searches_and_combines_as_the_key(kind, K, D):
    """``prepare(key)`` in place of the key (the trajectory derives it once a step for both): the same
    picks and the same noise, bit for bit (Hadamard: sign and row tables; the streamed kinds: the key)."""
    cb = get_codebook(kind, K, D)
    prepared = jax.jit(cb.prepare)(KEY)
    idx, signs = SEARCH(cb, KEY, _residual(D, 7), 16)
    p_idx, p_signs = jax.jit(lambda t, r: cb.search(t, r, 16))(prepared, _residual(D, 7))
    np.testing.assert_array_equal(np.asarray(p_idx), np.asarray(idx))
    np.testing.assert_array_equal(np.asarray(p_signs), np.asarray(signs))
    np.testing.assert_array_equal(np.asarray(jax.jit(cb.combine)(prepared, idx, signs)),
                                  np.asarray(COMBINE(cb, KEY, idx, signs)))


def test_exact_std_matches_float():
    z = jnp.asarray(np.random.default_rng(2).integers(-64, 65, size=230400), jnp.float32)
    np.testing.assert_allclose(np.asarray(cbm._unit_std_exact(z)), np.asarray(z / jnp.std(z)), rtol=2e-6)
    np.testing.assert_array_equal(np.asarray(cbm._unit_std_exact(jnp.zeros(8))), np.zeros(8))


# sha256 of atoms(frame_key(1234, 0, 1, 2), arange(8)) at D = 300 (float32 bytes, little endian).
# A change here means the codebook changed: that is a bitstream format break.
GOLDEN = {
    "hadamard": "c02df7dd6818d89c093eea6364ac4702a6ace22898afaac4351375662ea46e2b",
    "gaussian": "b9c3da457d4587e4252356dd02fc5b10c6a9a8627a2b8d7807f294a2f1074802",
    "rademacher": "8e7f848858940bd520efbe0cd611307b73f8bd8d725f0135c6d77c255977d085",
}


@pytest.mark.parametrize("kind", KINDS)
def test_golden_hashes(kind):
    cb = get_codebook(kind, 64, 300)
    a = np.asarray(ATOMS(cb, frame_key(1234, 0, 1, 2), jnp.arange(8, dtype=jnp.int32)), dtype="<f4")
    assert hashlib.sha256(a.tobytes()).hexdigest() == GOLDEN[kind]


@pytest.mark.parametrize("kind,K,D", CASES)
def test_vmap_over_frames_and_jit(kind, K, D):
    cb = get_codebook(kind, K, D)
    frames = jnp.arange(3, dtype=jnp.int32)
    res = jax.vmap(lambda f: _residual(D, 6) * (f + 1.0) + jnp.roll(_residual(D, 7), f))(frames)

    @jax.jit
    def encode(seed, step, frames, res):
        keys = jax.vmap(lambda f: frame_key(seed, 0, step, f))(frames)
        idx, sg = jax.vmap(lambda k, r: cb.search(k, r, 16))(keys, res)
        z = jax.vmap(cb.combine)(keys, idx, sg)
        return idx, sg, z

    idx, sg, z = encode(jnp.uint32(1234), jnp.int32(1), frames, res)
    for f in range(3):
        k = frame_key(1234, 0, 1, f)
        i1, s1 = SEARCH(cb, k, res[f], 16)
        np.testing.assert_array_equal(np.asarray(idx[f]), np.asarray(i1))
        np.testing.assert_array_equal(np.asarray(sg[f]), np.asarray(s1))
        np.testing.assert_allclose(np.asarray(z[f]), np.asarray(COMBINE(cb, k, i1, s1)), rtol=1e-6, atol=1e-6)
    # distinct frames -> distinct codebooks
    a0 = ATOMS(cb, frame_key(1234, 0, 1, 0), jnp.arange(4))
    a1 = ATOMS(cb, frame_key(1234, 0, 1, 1), jnp.arange(4))
    assert not np.array_equal(np.asarray(a0), np.asarray(a1))


def test_frame_key_in_scan_and_static_codebook():
    cb = get_codebook("hadamard", 64, 48)

    @jax.jit
    def run(seed):
        def body(c, step):
            return c, cb.atoms(frame_key(seed, 2, step, 1), jnp.arange(3))
        return jax.lax.scan(body, 0, jnp.arange(2))[1]

    out = run(5)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ATOMS(cb, frame_key(5, 2, 1, 1), jnp.arange(3))))
    f = jax.jit(lambda c, k, r: c.search(k, r, 4), static_argnums=0)
    i, _ = f(get_codebook("hadamard", 64, 48), KEY, _residual(48))
    i2, _ = f(Codebook("hadamard", 64, 48), KEY, _residual(48))  # equal static -> cache hit, same result
    np.testing.assert_array_equal(np.asarray(i), np.asarray(i2))
    assert hash(get_codebook("gaussian", 8, 8)) == hash(Codebook("gaussian", 8, 8))


def test_errors():
    with pytest.raises(ValueError, match="unknown codebook kind"):
        get_codebook("bernoulli", 8, 8)
    with pytest.raises(ValueError, match="K must be >= 1"):
        get_codebook("gaussian", 0, 8)
    with pytest.raises(ValueError, match="D must be >= 1"):
        get_codebook("rademacher", 8, 0)
    with pytest.raises(ValueError, match="M <= K"):
        get_codebook("rademacher", 8, 8).search(KEY, jnp.zeros(8), 9)
    with pytest.raises(ValueError, match="1 <= M"):
        get_codebook("hadamard", 8, 8).search(KEY, jnp.zeros(8), 0)


def test_hadamard_multi_basis_extends_single_basis():
    """K > P: basis 0 is exactly the single-basis codebook; the other bases are new atoms."""
    small, big = get_codebook("hadamard", 64, 48), get_codebook("hadamard", 200, 48)
    assert big.bases == 4 and small.bases == 1
    a_small = np.asarray(ATOMS(small, KEY, jnp.arange(64)))
    a_big = np.asarray(ATOMS(big, KEY, jnp.arange(200)))
    np.testing.assert_array_equal(a_big[:64], a_small)
    assert np.unique(np.abs(a_big @ a_big.T)[np.triu_indices(200, 1)] < 48).all()  # no repeated atom


def test_hadamard_program_size_does_not_grow_with_the_number_of_bases():
    """The bases are one vmap, not an unrolled loop: 16 bases lower to about the program of one."""
    def program_lines(K):
        cb = get_codebook("hadamard", K, 48)  # P = 64
        r = jnp.zeros((48,), jnp.float32)
        idx, c = jnp.arange(8, dtype=jnp.int32), jnp.ones((8,), jnp.float32)
        def lower(f, *a):
            return len(jax.jit(f).lower(*a).as_text().splitlines())

        return (lower(lambda k, r: cb.inner_products(k, r), KEY, r)
                + lower(lambda k, i, c: cb.combine(k, i, c), KEY, idx, c)
                + lower(lambda k, i: cb.atoms(k, i), KEY, idx))
    one, sixteen = program_lines(64), program_lines(16 * 64)
    assert sixteen < 1.5 * one, (one, sixteen)
