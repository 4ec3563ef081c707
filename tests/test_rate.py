"""Rate targeting: the exact size formula, and --target-bpp landing within 5 % of the target."""
import numpy as np
import pytest

from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop.rate import RateError, atoms_pattern, fit_atoms, stream_bytes
from gvc_jax.codec.sampling.schedule import SamplerConfig


def _header(apf=(3, 4, 5), K=512, num_gops=3, steps=6):
    return bitstream.Header(model_fingerprint=bytes(8), preset="tiny", variant="flf2v", width=64, height=48,
                            orig_width=60, orig_height=40, num_frames=25, fps_num=16, fps_den=1, gop_frames=9,
                            num_gops=num_gops, sampler=SamplerConfig(steps=steps, tail=2, K=K, atoms_per_frame=apf))


def _record(rng, h, sides):
    picks = tuple(tuple((np.sort(rng.choice(h.K, m, replace=False)).astype(np.int32),
                         rng.choice(np.array([-1, 1], np.int8), m)) for m in h.atoms_per_frame)
                  for _ in range(h.stochastic_steps))
    return bitstream.GopRecord(picks=picks, latent_hash=rng.bytes(8), side=tuple((1, rng.bytes(n)) for n in sides))


def test_stream_bytes_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = _header(apf=tuple(int(m) for m in rng.integers(1, 40, 3)), K=int(rng.choice([64, 1000, 16384])),
                    num_gops=3)
        sides = [list(rng.integers(0, 300, rng.integers(0, 3))) for _ in range(3)]
        stream = bitstream.write(h, [_record(rng, h, s) for s in sides])
        assert stream_bytes(h, sides) == len(stream)


def test_fit_atoms_fills_the_budget_from_below():
    h = _header(apf=(1, 1, 1), K=16384)
    sides = [[400, 380], [390], [410]]
    for budget in (2000, 3000, 5000, 12000):
        apf = fit_atoms(h, budget, sides)
        size = stream_bytes(h.replace(sampler=h.sampler.replace(atoms_per_frame=apf)), sides)
        assert size <= budget and size > 0.95 * budget, (budget, apf, size)
        assert max(apf) - min(apf) <= 1
    with pytest.raises(RateError, match="budget"):
        fit_atoms(h, 1000, sides)  # the anchors alone are over it
    tail = fit_atoms(h, 6000, sides, atoms_pattern(3, 1, 2.0))
    assert tail[-1] >= 2 * tail[0] - 1


def test_target_bpp_lands_within_5_percent_end_to_end():
    from gvc_jax import api
    from gvc_jax.models.registry import init_preset

    rng = np.random.default_rng(1)
    video = np.clip(rng.integers(0, 200, (1, 40, 56, 3)) + 3 * np.arange(9)[:, None, None, None], 0, 255)
    model = init_preset("tiny")
    opts = api.CodecOptions(codebook_size=4096, steps=4, tail=1, gop_frames=9)
    for target in (0.15, 0.4):
        stream = api.encode(video.astype(np.uint8), model, opts, fps=16, target_bpp=target)
        bpp = 8 * len(stream) / (9 * 56 * 40)
        assert 0.95 * target <= bpp <= target, (target, bpp)
    with pytest.raises(ValueError, match="target_bpp"):
        api.CodecOptions(target_bpp=float("nan"))
