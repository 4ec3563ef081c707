"""Combinatorial-rank coding of index subsets (the bits themselves: ``codec.format.bits``).

A codebook pick for one (step, latent frame) is a subset of M atom indices out of K. Any such
subset is coded by its rank in the combinatorial number system, an integer in [0, C(K, M)),
written in ``ceil(log2 C(K, M))`` bits (docs/method_notes.md §Rate accounting).
For indices ``c_0 < c_1 < ... < c_{M-1}``:

    rank = sum_j C(c_j, j + 1)

This is a bijection between M-subsets of [0, K) and [0, C(K, M)) ("ranks are dense"), so the
coding wastes less than one bit per subset.

Pure Python ints and numpy only (no jax): the bitstream is parsed before any model is loaded.
"""
from __future__ import annotations

import math
from typing import Sequence


def _check_km(K: int, M: int) -> None:
    if not isinstance(K, int) or not isinstance(M, int) or isinstance(K, bool) or isinstance(M, bool):
        raise ValueError(f"K and M must be ints, got K={K!r}, M={M!r}")
    if K < 0 or M < 0 or M > K:
        raise ValueError(f"need 0 <= M <= K, got K={K}, M={M}")


def subset_rank_bits(K: int, M: int) -> int:
    """Bits of a subset rank: ``ceil(log2 C(K, M))``, 0 when C(K, M) == 1 (M == 0 or M == K)."""
    _check_km(K, M)
    return (math.comb(K, M) - 1).bit_length()


def _use_walk(K: int, M: int) -> bool:
    """Large M: walking C(c, i) with small-int ratios (O(K) steps) beats M separate big combs."""
    return M > 384 and K <= 256 * M


def rank_subset(indices: Sequence[int], K: int) -> int:
    """Combinatorial-number-system rank of a strictly increasing index list in [0, K).

    indices: [M] ints (list, tuple or integer numpy array). Returns an int in [0, C(K, M)).
    """
    idx = [int(x) for x in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    _check_km(K, len(idx))
    prev = -1
    for j, c in enumerate(idx):
        if c <= prev:
            raise ValueError(f"indices must be strictly increasing, got {prev} then {c} at position {j}")
        prev = c
    if idx and (idx[0] < 0 or idx[-1] >= K):
        raise ValueError(f"index {idx[0] if idx[0] < 0 else idx[-1]} out of range [0, {K})")
    if _use_walk(K, len(idx)):
        return _rank_walk(idx)
    return sum(math.comb(c, j + 1) for j, c in enumerate(idx))


def _rank_walk(idx: list[int]) -> int:
    """sum_j C(c_j, j + 1), carrying v = C(c, k) up in c and k by exact small-int ratios."""
    rank = 0
    c, k, v = 0, 1, 0
    for j, cj in enumerate(idx):
        while k < j + 1:  # C(c, k + 1) = C(c, k) (c - k) / (k + 1)
            v = v * (c - k) // (k + 1) if c > k else 0
            k += 1
        while c < cj:  # C(c + 1, k) = C(c, k) (c + 1) / (c + 1 - k)
            if c + 1 < k:
                v = 0
            elif c + 1 == k:
                v = 1
            else:
                v = v * (c + 1) // (c + 1 - k)
            c += 1
        rank += v
    return rank


def _unrank_walk(r: int, K: int, M: int) -> list[int]:
    """Greedy unrank walking c down from K - 1 with v = C(c, i) updated by exact small-int ratios."""
    out = [0] * M
    c, i = K - 1, M
    v = math.comb(c, i)
    while i > 0:
        if v <= r:  # take c; C(c - 1, i - 1) = C(c, i) i / c
            out[i - 1] = c
            r -= v
            v = v * i // c if c else 0
            i -= 1
        else:  # C(c - 1, i) = C(c, i) (c - i) / c
            v = v * (c - i) // c
        c -= 1
    return out


def _log_comb(c: int, i: int) -> float:
    """Natural log of C(c, i) for c >= i >= 1 (floating point estimate)."""
    return math.lgamma(c + 1) - math.lgamma(i + 1) - math.lgamma(c - i + 1)


def _largest_c(r: int, i: int, hi: int) -> tuple[int, int]:
    """(c, C(c, i)) for the largest c in [i - 1, hi] with C(c, i) <= r (C(i - 1, i) = 0, so it exists).

    A float (lgamma) estimate gives a guess; one exact big-int comb and +-1 steps then correct it.
    """
    if r == 0 or hi < i:
        return i - 1, 0
    if i == 1:
        c = min(r, hi)
        return c, c
    target = math.log(r) + 1e-9

    def fits(c: int) -> bool:  # float test of C(c, i) <= r
        return c < i or _log_comb(c, i) <= target

    # Guess from C(c, i) ~ (c - (i - 1) / 2)^i / i!, then gallop to a bracket fits(lo), not fits(up).
    guess = math.exp((target + math.lgamma(i + 1)) / i) + (i - 1) / 2
    c0 = min(max(int(guess), i - 1), hi)
    step = 1
    if fits(c0):
        lo, up = c0, hi + 1
        while lo + step <= hi:
            if not fits(lo + step):
                up = lo + step
                break
            lo += step
            step *= 2
    else:
        lo, up = i - 1, c0
        while up - step > i - 1:
            if fits(up - step):
                lo = up - step
                break
            up -= step
            step *= 2
    while up - lo > 1:
        mid = (lo + up) // 2
        if fits(mid):
            lo = mid
        else:
            up = mid
    c = lo
    v = math.comb(c, i)
    while v > r:  # guess too high: step down, C(c-1, i) = C(c, i) * (c - i) / c
        v = v * (c - i) // c
        c -= 1
    while c < hi:  # guess too low: step up, C(c+1, i) = C(c, i) * (c + 1) / (c + 1 - i)
        nxt = v * (c + 1) // (c + 1 - i)
        if nxt > r:
            break
        v, c = nxt, c + 1
    return c, v


def unrank_subset(rank: int, K: int, M: int) -> list[int]:
    """Inverse of ``rank_subset``: the strictly increasing [M] index list of rank ``rank``.

    Raises ValueError if ``rank`` is not in [0, C(K, M)).
    """
    _check_km(K, M)
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise ValueError(f"rank must be an int, got {type(rank).__name__}")
    total = math.comb(K, M)
    if not 0 <= rank < total:
        raise ValueError(f"rank {rank} out of range [0, C({K}, {M})) for a subset of {M} of {K}")
    if _use_walk(K, M):
        return _unrank_walk(rank, K, M)
    out = [0] * M
    r = rank
    hi = K - 1
    for i in range(M, 0, -1):
        c, v = _largest_c(r, i, hi)
        out[i - 1] = c
        r -= v
        hi = c - 1
    return out
