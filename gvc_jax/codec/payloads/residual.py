"""The I2V tail latent residual: per-channel uniform quantiser + range coding (``constriction``).

The encoder knows the decoder's final latent exactly; it codes ``r = true - decoded`` on the last
latent frame ([h, w, C]) and both sides add the dequantised ``r`` before VAE decoding.

Payload::
    u8 format (1)   u8 C
    per channel:    f16 step (in STEP_RANGE, as on the encoder)   u8 mode   [mode * c int8 predictor coefficients]
                    varint A (max |e|)   [u8 k, only if A > 0]
    then:           the range coder's 32-bit words, little-endian

Levels ``L = round(r / step_c)`` (the reconstruction is ``L * step_c``, whatever the mode).
Channels are coded in order; channel ``c`` codes ``e = L_c - pred_c`` where ``pred_c`` is an exact
integer linear prediction from the levels of channels ``< c``: mode 0 none, mode 1 their values at
the same position, mode 2 those plus the sums of their four spatial neighbours (coefficients in
units of 1/64, fitted by the encoder and sent). The latent's channels are correlated, so this
removes what an i.i.d. coder would pay twice. ``e`` in ``[-A, A]`` is range coded with a two-sided
geometric model ``p(e) ~ theta^|e|``, ``theta = k / 256``, built from the payload's integers
only with IEEE float64 products (the same on every machine: no exp/log); the encoder picks the
mode and ``k`` per channel by the exact code length. Compared with the published scheme (8-bit
per-channel max-abs quantiser + zlib) at equal latent MSE: docs/residual_coder.md.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import Optional, Sequence, Tuple

import numpy as np

from gvc_jax.codec.format.bits import BitstreamError, Cursor
from gvc_jax.codec.format.bitstream import encode_varint

FORMAT = 1
DEFAULT_STEP = 0.25
STEP_RANGE = (1e-4, 1000.0)  # the quantiser steps an encoder may use, checked again on read
# ... as stored (float16-rounded; rounding is monotonic, so every accepted step stays inside)
STORED_STEP_RANGE = tuple(float(np.float16(v)) for v in STEP_RANGE)
MAX_LEVEL = 1 << 15  # |q| bound: a step this small relative to the residual is not a useful setting
_K_VALUES = np.arange(1, 256)
COEF_SHIFT = 6  # predictor coefficients are int8 in units of 1/64


class ResidualError(ValueError):
    """Bad residual options (step) or input shapes."""

def check_step(step, channels: int | None = None) -> np.ndarray:
    """-> float32 [C] (or [1]) steps as stored (float16-rounded); ResidualError if unusable."""
    s = np.atleast_1d(np.asarray(step, np.float64))
    if s.ndim != 1 or (channels is not None and len(s) not in (1, channels)):
        raise ResidualError(f"residual step must be a number or one per channel ({channels}), got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < STEP_RANGE[0]) or np.any(s > STEP_RANGE[1]):
        raise ResidualError(f"residual step must be in [{STEP_RANGE[0]:g}, {STEP_RANGE[1]:g}], got {step!r}")
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


def _code_bits(e: np.ndarray) -> Tuple[float, int]:
    """(ideal code length in bits, best decay index k) of symbols ``e`` under the channel model."""
    a = int(np.max(np.abs(e))) if e.size else 0
    if not a:
        return 0.0, 0
    theta = _K_VALUES / 256.0
    z = (1 + theta - 2 * theta ** (a + 1)) / (1 - theta)  # sum of theta^|x| over [-a, a]
    bits = e.size * np.log2(z) - float(np.abs(e).sum()) * np.log2(theta)  # encoder-side only
    i = int(np.argmin(bits))
    return float(bits[i]), int(_K_VALUES[i])


def _features(levels: np.ndarray, c: int, mode: int) -> np.ndarray:
    """Integer predictor inputs of channel ``c`` [h*w, taps]: the levels of channels ``< c`` at the
    same position (mode 1), plus the sum of their four spatial neighbours, zero outside (mode 2).
    All of them are known to the decoder before it decodes channel ``c``."""
    prev = levels[..., :c]
    feats = [prev]
    if mode == 2:
        pad = np.pad(prev, ((1, 1), (1, 1), (0, 0)))
        feats.append(pad[:-2, 1:-1] + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:])
    return np.concatenate(feats, axis=-1).reshape(-1, len(feats) * c)


def _predict(feats: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Integer prediction: round(feats . coef / 2^COEF_SHIFT), exact int64 arithmetic."""
    return (feats @ coef.astype(np.int64) + (1 << (COEF_SHIFT - 1))) >> COEF_SHIFT


def _fit(feats: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares predictor coefficients as int8 in units of 2^-COEF_SHIFT (encoder only)."""
    coef, *_ = np.linalg.lstsq(feats.astype(np.float64), target.astype(np.float64), rcond=None)
    return np.clip(np.rint(coef * (1 << COEF_SHIFT)), -127, 127).astype(np.int8)


def encode_residual(residual, step) -> bytes:
    """float32 [h, w, C] residual -> payload bytes.

    Channel by channel, the encoder picks the prediction mode (none / same position / same
    position + neighbours) with the smallest exact cost, coefficients included."""
    import constriction


    levels, steps = _quantise(residual, step)
    channels = levels.shape[-1]
    if channels > 255:
        raise ResidualError(f"at most 255 latent channels, got {channels}")
    head = bytearray([FORMAT, channels])
    enc = constriction.stream.queue.RangeEncoder()
    for c in range(channels):
        target = levels[..., c].ravel()
        best: Tuple[float, int, Optional[np.ndarray], np.ndarray] = (_code_bits(target)[0], 0, None, target)
        coef: Optional[np.ndarray]
        for mode in (1, 2) if c else ():
            feats = _features(levels, c, mode)
            coef = _fit(feats, target)
            e = target - _predict(feats, coef)
            bits = _code_bits(e)[0] + 8 * coef.size
            if bits < best[0]:
                best = (bits, mode, coef, e)
        _, mode, coef, e = best
        a = int(np.max(np.abs(e))) if e.size else 0
        head += struct.pack("<e", float(steps[c])) + bytes([mode])
        if coef is not None:  # mode 1 or 2: the predictor's coefficients
            head += coef.tobytes()
        head += encode_varint(a)
        if a:
            k = _code_bits(e)[1]
            head.append(k)
            enc.encode((e + a).astype(np.int32), _model(a, k))
    words = np.asarray(enc.get_compressed(), np.uint32).astype("<u4")
    return bytes(head) + words.tobytes()


def decode_residual(payload: bytes, shape: Sequence[int]) -> np.ndarray:
    """Payload -> the dequantised residual [h, w, C]; BitstreamError on anything malformed."""
    import constriction

    h, w, channels = (int(v) for v in shape)
    cur = Cursor(bytes(payload))
    if cur.u8("residual format") != FORMAT:
        raise BitstreamError("residual payload: unknown format")
    if cur.u8("residual channel count") != channels:
        raise BitstreamError(f"residual payload: channel count differs from the latent's {channels}")
    params = []
    for c in range(channels):
        step = struct.unpack("<e", cur.take(2, f"residual step {c}"))[0]
        if not (math.isfinite(step) and STORED_STEP_RANGE[0] <= step <= STORED_STEP_RANGE[1]):
            raise BitstreamError(f"residual payload: channel {c} step {step:g} is outside the encoder's range "
                                 f"[{STEP_RANGE[0]:g}, {STEP_RANGE[1]:g}]")
        mode = cur.u8(f"residual prediction mode {c}")
        if mode > 2 or (mode and not c):
            raise BitstreamError(f"residual payload: channel {c} has prediction mode {mode}")
        coef = np.frombuffer(cur.take(mode * c, f"residual predictor {c}"), np.int8) if mode else None
        a = cur.varint(f"residual level bound {c}")
        if a > 2 * MAX_LEVEL:
            raise BitstreamError(f"residual payload: channel {c} level bound {a} exceeds {2 * MAX_LEVEL}")
        k = cur.u8(f"residual model {c}") if a else 0
        if a and k == 0:
            raise BitstreamError(f"residual payload: channel {c} has model index 0")
        params.append((np.float32(step), mode, coef, a, k))
    rest = cur.take(cur.left, "residual words")
    if len(rest) % 4:
        raise BitstreamError("residual payload: the coded words are not whole 32-bit words")
    words = np.frombuffer(rest, "<u4").astype(np.uint32)
    if any(p[3] for p in params) and not len(words):
        raise BitstreamError("residual payload: no coded words")
    levels = np.zeros((h, w, channels), np.int64)
    try:
        dec = constriction.stream.queue.RangeDecoder(words)
        for c, (_, mode, coef, a, k) in enumerate(params):
            e = np.asarray(dec.decode(_model(a, k), h * w), np.int64) - a if a else np.zeros(h * w, np.int64)
            if mode:
                assert coef is not None  # read with every channel whose mode is not 0
                e = e + _predict(_features(levels, c, mode), coef)
            if np.any(np.abs(e) > MAX_LEVEL):
                raise BitstreamError(f"residual payload: channel {c} decodes to levels beyond {MAX_LEVEL}")
            levels[..., c] = e.reshape(h, w)
    except BitstreamError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt range-coded body
        raise BitstreamError(f"residual payload does not decode: {err}") from None
    steps = np.array([p[0] for p in params], np.float32)
    return (levels * steps).astype(np.float32)


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
    lo, hi = STEP_RANGE
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        mse = float(np.mean((reconstruct(r, mid) - r) ** 2))
        lo, hi = (mid, hi) if mse <= target_mse else (lo, mid)
    return lo
