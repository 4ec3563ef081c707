"""experiments/train_default.py: resumable orbax checkpoints (a resumed run ends bit-identical to an
uninterrupted one), the frozen-encoder decoder refinement, the DiT warm start, export, and the hue
rotation augmentation. A smaller VAE and DiT than the shipped ones and tiny crops keep it fast; the
uninterrupted stage-1 VAE run is made once and shared (the resume reference, the refinement's start)."""
from __future__ import annotations

import os
import shutil
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import train_default as td  # noqa: E402

from gvc_jax.models.checkpoint import load_model  # noqa: E402
from gvc_jax.models.configs import VAEConfig  # noqa: E402

SMALL_VAE = VAEConfig(base_dim=4, z_dim=td.Z, dim_mult=(1, 2, 2), num_res_blocks=1, attn_scales=(),
                      temperal_downsample=(True, True), latents_mean=(0.0,) * td.Z, latents_std=(1.0,) * td.Z)
# the shipped DiT's structure (input [z | mask | cond], patch, text width) at one narrow layer: the
# stages only need a DiT to train, warm-start and export, and each layer is compiled unrolled
SMALL_DIT = td.DIT_CFG.replace(num_layers=1, attention_head_dim=16, ffn_dim=64, freq_dim=32, text_len=8)
STAGE1_STEPS = ["--steps", "4"]


@pytest.fixture(scope="module")
def small():
    """Small VAE and DiT, tiny crops, and 2 smooth synthetic clips of 33 x 32 x 32 instead of the 350 MB cache.

    The training steps take single frames (the gradient programs, the slowest to compile, hold one
    encoder and one decoder chunk); the probe takes 5 frames, so the unrolled chunk loops with their
    causal caches (``encode_unrolled``, ``decode_unrolled``) still run in every VAE stage."""
    t, y, x = np.meshgrid(np.arange(33), np.arange(32), np.arange(32), indexing="ij")
    clips = np.stack([np.stack([127 + 100 * np.sin(0.1 * x + 0.05 * t + c + k) * np.cos(0.07 * y)
                                for c in range(3)], -1) for k in range(2)]).astype(np.uint8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(td, "VAE_CFG", SMALL_VAE)
        mp.setattr(td, "DIT_CFG", SMALL_DIT)
        mp.setitem(td.DEFAULTS, "vae_shapes", ((1, 1, (16, 16)), (1, 1, (16, 16))))  # one compile
        mp.setitem(td.DEFAULTS, "vae_probe", (1, 5, (16, 16)))
        mp.setitem(td.DEFAULTS, "vae_long_from", 2)
        mp.setitem(td.DEFAULTS, "refine_shapes", ((1, 1, (16, 16)),))
        mp.setitem(td.DEFAULTS, "dit_batch", 2)
        mp.setitem(td.DEFAULTS, "dit_crop", (4, 4))
        mp.setattr(td, "get_clips", lambda wd, n: clips)
        yield clips


@pytest.fixture(scope="module")
def stage1(small, tmp_path_factory):
    """An uninterrupted 4-step stage-1 VAE run (a checkpoint every step), read-only for the tests."""
    wd = str(tmp_path_factory.mktemp("train") / "stage1")
    assert td.main(["--stage", "vae", "--workdir", wd, *STAGE1_STEPS, "--ckpt-every", "1"]) == 0
    return wd


def _params(path, cfg=SMALL_VAE):
    from flax import nnx

    _, like, _ = td.split_model(td.WanVAE(cfg, rngs=nnx.Rngs(0)))
    return td.load_tree(path, like)


def test_vae_resume_is_bit_identical_to_an_uninterrupted_run(stage1, tmp_path, monkeypatch):
    a, b = stage1, str(tmp_path / "b")

    real_batch, calls = td.vae_batch, []

    def crash_on_third(*args, **kw):  # an interruption after the step-2 checkpoint
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_batch(*args, **kw)

    monkeypatch.setattr(td, "vae_batch", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        td.main(["--stage", "vae", "--workdir", b, *STAGE1_STEPS, "--ckpt-every", "1"])
    assert os.path.isdir(os.path.join(b, "vae_ckpt")) and not os.path.exists(os.path.join(b, "vae_final"))
    monkeypatch.setattr(td, "vae_batch", real_batch)
    assert td.main(["--stage", "vae", "--workdir", b, *STAGE1_STEPS, "--resume"]) == 0

    (pa, _), (pb, _) = _params(os.path.join(a, "vae_final")), _params(os.path.join(b, "vae_final"))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=False):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in open(os.path.join(b, "vae_log.jsonl"))]
    assert steps[0] == 0 and steps[-1] == 3


def test_refine_trains_the_decoder_only_then_dit_and_export(stage1, tmp_path):
    wd = str(tmp_path / "w")
    shutil.copytree(stage1, wd)  # the refinement starts from stage 1's vae_final (moved to vae_stage1)
    assert td.main(["--stage", "vae_refine", "--workdir", wd, "--steps", "3", "--dev-every", "0"]) == 0
    before, _ = _params(os.path.join(wd, "vae_stage1"))
    after, _ = _params(os.path.join(wd, "vae_final"))
    changed = {}
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=False):
        part = path[0].key
        changed.setdefault(part, []).append(not np.array_equal(np.asarray(x), np.asarray(y)))
    assert not any(changed["encoder"]) and not any(changed["quant_conv"])
    assert any(changed["decoder"])

    # latents of the refined VAE, a warm-started DiT, and the exported model directory
    assert td.main(["--stage", "latents", "--workdir", wd, "--clips", "2"]) == 0
    assert td.main(["--stage", "dit", "--workdir", wd, "--steps", "2"]) == 0
    assert td.main(["--stage", "dit", "--workdir", wd, "--steps", "1", "--init", os.path.join(wd, "dit_final")]) == 0
    assert os.path.isfile(os.path.join(wd, "dit_warm_log.jsonl"))
    out = str(tmp_path / "model")
    assert td.main(["--stage", "export", "--workdir", wd, "--out", out]) == 0
    m = load_model(out)
    assert m.config.name == td.MODEL_NAME and m.config.vae.base_dim == SMALL_VAE.base_dim
    assert m.config.dit.num_layers == SMALL_DIT.num_layers


def test_hue_rotate():
    x = np.array([[[200, 40, 30], [90, 90, 90]]], np.uint8)
    np.testing.assert_allclose(td.hue_rotate(x, 0.0, 1.0), x, atol=1e-3)
    y = td.hue_rotate(x, 2 * np.pi / 3, 1.0)  # a third of a turn maps R -> G -> B
    np.testing.assert_allclose(y[0, 0], [30, 200, 40], atol=1e-3)
    np.testing.assert_allclose(y[0, 1], [90, 90, 90], atol=1e-3)  # grey is the axis
    s = td.hue_rotate(x, 0.0, 0.0)  # zero saturation: grey of the same mean
    np.testing.assert_allclose(s[0, 0], [90, 90, 90], atol=1e-3)
