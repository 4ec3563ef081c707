"""Tests for gvc_jax.codec.format.ranks: subset ranks (exhaustive small, random large), bit sizes, bit I/O."""
import itertools
import math

import numpy as np
import pytest

from gvc_jax.codec.format import ranks
from gvc_jax.codec.format.bits import BitReader, BitstreamError, BitWriter
from gvc_jax.codec.format.ranks import rank_subset, subset_rank_bits, unrank_subset


def _bits_reference(K, M):
    """Smallest b with 2**b >= C(K, M), by search (independent of bit_length)."""
    n = math.comb(K, M)
    b = 0
    while (1 << b) < n:
        b += 1
    return b


@pytest.mark.parametrize("K", range(0, 13))
def test_exhaustive_round_trip_and_dense(K):
    for M in range(0, K + 1):
        subsets = list(itertools.combinations(range(K), M))
        got = [rank_subset(list(s), K) for s in subsets]
        # Dense and a bijection onto [0, C(K, M)).
        assert sorted(got) == list(range(math.comb(K, M)))
        # Colexicographic order (combinatorial number system): rank order = order of reversed tuples.
        order = sorted(range(len(subsets)), key=lambda i: subsets[i][::-1])
        assert [got[i] for i in order] == list(range(len(subsets)))
        for s, r in zip(subsets, got, strict=False):
            assert tuple(unrank_subset(r, K, M)) == s
        assert subset_rank_bits(K, M) == _bits_reference(K, M)


@pytest.mark.parametrize("M", [1, 64, 128])
def test_random_large(M):
    K = 16384
    rng = np.random.default_rng(M)
    for _ in range(5):
        idx = np.sort(rng.choice(K, M, replace=False)).astype(np.int32)
        r = rank_subset(idx, K)
        assert 0 <= r < math.comb(K, M)
        assert r.bit_length() <= subset_rank_bits(K, M)
        assert unrank_subset(r, K, M) == idx.tolist()
    # The extreme ranks.
    for r in (0, 1, math.comb(K, M) - 1, math.comb(K, M) // 3):
        u = unrank_subset(r, K, M)
        assert all(a < b for a, b in zip(u, u[1:], strict=False)) and 0 <= u[0] and u[-1] < K
        assert rank_subset(u, K) == r
    assert unrank_subset(0, K, M) == list(range(M))
    assert unrank_subset(math.comb(K, M) - 1, K, M) == list(range(K - M, K))


def test_rank_round_trip_k16384_m128():
    """The default geometry's largest M round-trips (its speed is a benchmark: experiments/bench_step.py)."""
    K, M = 16384, 128
    idx = np.sort(np.random.default_rng(0).choice(K, M, replace=False))
    assert unrank_subset(rank_subset(idx, K), K, M) == idx.tolist()


@pytest.mark.parametrize("K,M", [(2000, 1000), (1000, 999), (3000, 2990), (1200, 700)])
def test_large_m_paths_agree(K, M):
    """Large M uses the incremental walk; it must agree with the direct comb sum and round-trip."""
    assert ranks._use_walk(K, M)
    rng = np.random.default_rng(K + M)
    idx = np.sort(rng.choice(K, M, replace=False)).tolist()
    r = rank_subset(idx, K)
    assert r == sum(math.comb(c, j + 1) for j, c in enumerate(idx))
    assert unrank_subset(r, K, M) == idx
    for r in (0, math.comb(K, M) - 1, math.comb(K, M) // 7):
        assert rank_subset(unrank_subset(r, K, M), K) == r


def test_huge_k():
    K, M = 1 << 24, 128
    idx = np.sort(np.random.default_rng(1).choice(K, M, replace=False)).tolist()
    assert unrank_subset(rank_subset(idx, K), K, M) == idx


def test_spec_rate_figures():
    # docs/method_notes.md §Rate accounting: K = 16384, M = 64 -> 664 bits with signs;
    # 80 -> 805; 128 -> 1204.
    for M, total in ((64, 664), (80, 805), (128, 1204)):
        assert subset_rank_bits(16384, M) + M == total
    for K, M in ((16384, 64), (16384, 80), (16384, 128), (100, 50), (1 << 24, 3)):
        assert subset_rank_bits(K, M) == _bits_reference(K, M)
        n = math.comb(K, M)
        assert 2 ** (subset_rank_bits(K, M) - 1) < n <= 2 ** subset_rank_bits(K, M)
        assert abs(subset_rank_bits(K, M) - math.log2(n)) < 1 + 1e-9


def test_rank_errors():
    with pytest.raises(ValueError):
        rank_subset([3, 3], 10)
    with pytest.raises(ValueError):
        rank_subset([4, 2], 10)
    with pytest.raises(ValueError):
        rank_subset([1, 10], 10)
    with pytest.raises(ValueError):
        rank_subset([-1, 2], 10)
    with pytest.raises(ValueError):
        unrank_subset(math.comb(10, 3), 10, 3)
    with pytest.raises(ValueError):
        unrank_subset(-1, 10, 3)
    with pytest.raises(ValueError):
        subset_rank_bits(3, 4)
    assert unrank_subset(0, 5, 0) == [] and rank_subset([], 5) == 0


def test_bit_writer_reader_round_trip():
    rng = np.random.default_rng(0)
    fields = []
    bw = BitWriter()
    for _ in range(500):
        n = int(rng.integers(0, 200))
        v = int.from_bytes(rng.bytes(32), "big") & ((1 << n) - 1)
        fields.append((v, n))
        bw.write(v, n)
    bits = rng.integers(0, 2, 13).tolist()
    bw.write_bits(bits)
    total = sum(n for _, n in fields) + 13
    assert bw.bit_length == total
    data = bw.getvalue()
    assert len(data) == (total + 7) // 8
    # Independent reference: concatenate as a binary string.
    ref = "".join(format(v, f"0{n}b") if n else "" for v, n in fields) + "".join(map(str, bits))
    ref += "0" * (-len(ref) % 8)
    assert data == int(ref, 2).to_bytes(len(ref) // 8, "big")
    br = BitReader(data)
    for v, n in fields:
        assert br.read(n) == v
    assert [br.read(1) for _ in bits] == bits
    assert br.bits_left == 8 * len(data) - total
    br.read(br.bits_left)
    with pytest.raises(BitstreamError):
        br.read(1)


def test_bit_writer_msb_first_and_errors():
    bw = BitWriter()
    bw.write(1, 1)
    bw.write(0b01, 2)
    assert bw.getvalue() == bytes([0b10100000])
    with pytest.raises(ValueError):
        bw.write(4, 2)
    with pytest.raises(ValueError):
        bw.write(-1, 3)
    with pytest.raises(ValueError):
        bw.write_bits([0, 2])
    assert BitReader(b"").read(0) == 0
    with pytest.raises(BitstreamError):
        BitReader(b"\x00").read(9)
