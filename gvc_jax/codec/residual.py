"""The I2V tail latent residual: per-channel uniform quantiser + range coding (``constriction``).

The encoder knows the decoder's final latent exactly; it codes ``r = true - decoded`` on the last
latent frame ([h, w, C]) and both sides add the dequantised ``r`` before VAE decoding.

Payload::

    u8 format (1)   u8 C
    per channel:    f16 step   varint A (max |q|)   [u8 k, only if A > 0]
    then:           the range coder's 32-bit words, little-endian

``q = round(r / step_c)``. Channel ``c``'s symbols ``q`` in ``[-A, A]`` are coded with a two-sided
geometric model ``p(q) ~ theta^|q|``, ``theta = k / 256``. The model is built from the payload's
integers only, with IEEE float64 products (exactly reproducible on every machine: no exp/log);
the encoder picks ``k`` per channel to minimise the exact code length. Compared with the published
scheme (8-bit per-channel max-abs quantiser + zlib) at equal latent MSE, see docs/residual_coder.md.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Sequence, Tuple

import numpy as np

from gvc_jax.codec.ranks import BitstreamError

FORMAT = 1
DEFAULT_STEP = 0.25
MAX_LEVEL = 1 << 15  # |q| bound: a step this small relative to the residual is not a useful setting
_K_VALUES = np.arange(1, 256)


class ResidualError(ValueError):
    """Bad residual options (step) or input shapes."""


def check_step(step, channels: int | None = None) -> np.ndarray:
    """-> float32 [C] (or [1]) steps as stored (float16-rounded); ResidualError if unusable."""
    s = np.atleast_1d(np.asarray(step, np.float64))
    if s.ndim != 1 or (channels is not None and len(s) not in (1, channels)):
        raise ResidualError(f"residual step must be a number or one per channel ({channels}), got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0) or np.any(s > 1000) or np.any(s < 1e-4):
        raise ResidualError(f"residual step must be in [1e-4, 1000], got {step!r}")
    s = s.astype(np.float16).astype(np.float32)
    return s if channels is None else np.broadcast_to(s, (channels,)).copy()


def _quantise(residual: np.ndarray, step) -> Tuple[np.ndarray, np.ndarray]:
    r = np.asarray(residual, np.float32)
    if r.ndim != 3 or not np.all(np.isfinite(r)):
        raise ResidualError(f"the residual is a finite [h, w, C] array, got shape {r.shape}")
    steps = check_step(step, r.shape[-1])
    q = np.rint(r / steps).astype(np.int64)
    return np.clip(q, -MAX_LEVEL, MAX_LEVEL), steps


def reconstruct(residual, step) -> np.ndarray:
    """What the decoder will add: ``decode_residual(encode_residual(r, step), r.shape)``."""
    q, steps = _quantise(residual, step)
    return (q * steps).astype(np.float32)


def _pmf(a: int, k: int) -> np.ndarray:
    """Two-sided geometric weights over [-a, a] with theta = k/256, by float64 products."""
    theta = k / 256.0
    half = np.concatenate([[1.0], np.cumprod(np.full(a, theta, np.float64))])  # sequential products
    return np.concatenate([half[:0:-1], half])


def _model(a: int, k: int):
    import constriction

    return constriction.stream.model.Categorical(_pmf(a, k), perfect=False)


def _best_k(q: np.ndarray, a: int) -> int:
    """The decay index with the smallest ideal code length for the channel's symbols."""
    theta = _K_VALUES / 256.0
    z = (1 + theta - 2 * theta ** (a + 1)) / (1 - theta)  # sum of theta^|x| over [-a, a]
    bits = q.size * np.log2(z) - float(np.abs(q).sum()) * np.log2(theta)  # encoder-side only
    return int(_K_VALUES[int(np.argmin(bits))])


def encode_residual(residual, step) -> bytes:
    """float32 [h, w, C] residual -> payload bytes."""
    import constriction

    q, steps = _quantise(residual, step)
    channels = q.shape[-1]
    if channels > 255:
        raise ResidualError(f"at most 255 latent channels, got {channels}")
    head = bytearray([FORMAT, channels])
    enc = constriction.stream.queue.RangeEncoder()
    from gvc_jax.codec.bitstream import encode_varint

    for c in range(channels):
        qc = q[..., c].ravel()
        a = int(np.max(np.abs(qc))) if qc.size else 0
        head += struct.pack("<e", float(steps[c])) + encode_varint(a)
        if a:
            k = _best_k(qc, a)
            head.append(k)
            enc.encode((qc + a).astype(np.int32), _model(a, k))
    words = np.asarray(enc.get_compressed(), np.uint32).astype("<u4")
    return bytes(head) + words.tobytes()


def decode_residual(payload: bytes, shape: Sequence[int]) -> np.ndarray:
    """Payload -> the dequantised residual [h, w, C]; BitstreamError on anything malformed."""
    import constriction

    from gvc_jax.codec.bitstream import _Cursor

    h, w, channels = (int(v) for v in shape)
    cur = _Cursor(bytes(payload))
    if cur.u8("residual format") != FORMAT:
        raise BitstreamError("residual payload: unknown format")
    if cur.u8("residual channel count") != channels:
        raise BitstreamError(f"residual payload: channel count differs from the latent's {channels}")
    params = []
    for c in range(channels):
        step = struct.unpack("<e", cur.take(2, f"residual step {c}"))[0]
        if not (math.isfinite(step) and step > 0):
            raise BitstreamError(f"residual payload: channel {c} step {step} is not positive")
        a = cur.varint(f"residual level bound {c}")
        if a > MAX_LEVEL:
            raise BitstreamError(f"residual payload: channel {c} level bound {a} exceeds {MAX_LEVEL}")
        k = cur.u8(f"residual model {c}") if a else 0
        if a and k == 0:
            raise BitstreamError(f"residual payload: channel {c} has model index 0")
        params.append((np.float32(step), a, k))
    rest = cur.take(cur.left, "residual words")
    if len(rest) % 4:
        raise BitstreamError("residual payload: the coded words are not whole 32-bit words")
    words = np.frombuffer(rest, "<u4").astype(np.uint32)
    if any(a for _, a, _ in params) and not len(words):
        raise BitstreamError("residual payload: no coded words")
    out = np.zeros((h * w, channels), np.float32)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        for c, (step, a, k) in enumerate(params):
            if a:
                q = np.asarray(dec.decode(_model(a, k), h * w), np.int64) - a
                out[:, c] = q * step
    except BitstreamError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt range-coded body
        raise BitstreamError(f"residual payload does not decode: {err}") from None
    return out.reshape(h, w, channels)


def baseline_8bit_zlib(residual) -> Tuple[bytes, np.ndarray]:
    """The published scheme: per-channel max-abs 8-bit quantiser, float32 scales, zlib level 9."""
    r = np.asarray(residual, np.float32)
    scale = np.max(np.abs(r.reshape(-1, r.shape[-1])), axis=0).astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(r / scale * 127), -127, 127).astype(np.int8)
    payload = scale.tobytes() + zlib.compress(q.tobytes(), 9)
    return payload, (q.astype(np.float32) * scale / 127).astype(np.float32)


def step_for_mse(residual, target_mse: float) -> float:
    """The uniform step whose reconstruction MSE is closest to ``target_mse`` from below (bisection)."""
    r = np.asarray(residual, np.float32)
    lo, hi = 1e-4, 1000.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        mse = float(np.mean((reconstruct(r, mid) - r) ** 2))
        lo, hi = (mid, hi) if mse <= target_mse else (lo, mid)
    return lo
