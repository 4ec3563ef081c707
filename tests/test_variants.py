"""I2V and FLF2V on the shared GOP coder: bit-exact round trips, boundaries counted once, the
closed loop (the decoder's inputs are only the stream), adaptive atoms and the tail residual."""
import numpy as np
import pytest

from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop.variants import ANCHOR_TAG, FLF2V, I2V, RESIDUAL_TAG, VariantError, get_variant
from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.codec.session import decode_video, encode_video, rate_breakdown
from gvc_jax.models.registry import init_preset

GOP = 9
SAMPLER = SamplerConfig(steps=4, tail=1, g_scale=3.0, shift=3.0, K=256, atoms_per_frame=(3, 3, 6), seed=5)


@pytest.fixture(scope="module")
def model():
    return init_preset("tiny-anchored")


@pytest.fixture(scope="module")
def video():
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    frames, _ = read_video(sample_clip_path("bikes"), resize=(56, 40), max_frames=19)
    return frames  # 19 frames: GOPs [0, 9), [8, 17), [16, 19) + padding at hop 8


def _variants():
    return {"flf2v": FLF2V(anchor_codec="webp", anchor_quality=60),
            "i2v": I2V(anchor_codec="webp", anchor_quality=60, residual_step=0.25)}


@pytest.fixture(scope="module")
def encoded(model, video):
    return {name: encode_video(video, 25.0, model, SAMPLER, gop_frames=GOP, variant=v)
            for name, v in _variants().items()}


@pytest.mark.parametrize("name", ["flf2v", "i2v"])
def test_round_trip_is_bit_exact(model, video, encoded, name):
    enc = encoded[name]
    assert enc.header.variant == name and enc.video.shape == video.shape
    dec = decode_video(enc.stream, model, strict=True)  # strict: every GOP's latent hash matches
    np.testing.assert_array_equal(dec.video, enc.video)


def test_flf2v_boundaries_are_coded_once_and_shared(model, encoded):
    enc = encoded["flf2v"]
    _, records = bitstream.read(enc.stream)
    anchors = [[d for t, d in r.side if t == ANCHOR_TAG] for r in records]
    assert [len(a) for a in anchors] == [2, 1, 1]  # frames 0 and 8; 16; 18 (the last real frame)
    assert all(t == ANCHOR_TAG for r in records for t, _ in r.side)
    rate = rate_breakdown(enc)
    assert rate["anchor_bytes"] == sum(len(d) for a in anchors for d in a)
    assert sum(rate[k] for k in ("codebook_bytes", "anchor_bytes", "residual_bytes", "overhead_bytes")) \
        == len(enc.stream)
    plan = get_variant("flf2v").plan(19, GOP)
    assert [(s.start, s.stop, s.anchors) for s in plan.spans] == [(0, 9, (0, 8)), (8, 17, (8, 16)),
                                                                   (16, 19, (16, 18))]


def test_i2v_chain_with_tail_residual(model, video, encoded):
    enc = encoded["i2v"]
    _, records = bitstream.read(enc.stream)
    assert [sorted(t for t, _ in r.side) for r in records] == [[ANCHOR_TAG, RESIDUAL_TAG]] + \
        [[RESIDUAL_TAG]] * 2  # the first frame once, then a residual per GOP
    plan = get_variant("i2v").plan(19, GOP)
    assert [s.depends_on for s in plan.spans] == [(), (0,), (1,)]
    # without the residual the last latent frame is worse, and the stream smaller
    plain = encode_video(video, 25.0, model, SAMPLER, gop_frames=GOP,
                         variant=I2V(anchor_codec="webp", anchor_quality=60))
    rate, plain_rate = rate_breakdown(enc), rate_breakdown(plain)
    assert plain_rate["residual_bytes"] == 0 < rate["residual_bytes"]
    last = [s.stop - 1 for s in plan.spans[:-1]]  # the frames the next GOP is conditioned on
    err = lambda v: float(np.mean((v[last].astype(float) - video[last]) ** 2))  # noqa: E731
    assert err(enc.video) < err(plain.video)


def test_decoder_uses_only_the_stream(model, video, encoded):
    """Closed loop: the decoder's conditioning is the stream's anchor payloads. Swap GOP 1's
    boundary for another validly coded image and its output changes; GOP 0 (whose anchors are
    untouched) decodes exactly as before. GOP 1's latent then misses its hash while GOP 0's
    matches, which is a wrong record, not platform noise: an error unless ``allow_drift``."""
    from gvc_jax.codec.payloads.anchors import pack_anchor
    from gvc_jax.codec.session import DriftError

    enc = encoded["flf2v"]
    h, records = bitstream.read(enc.stream)
    grey = pack_anchor("webp", 60, np.full((h.height, h.width, 3), 128, np.uint8))
    r = records[1]
    records[1] = bitstream.GopRecord(r.picks, r.latent_hash, ((ANCHOR_TAG, grey),), r.atoms_per_frame)
    with pytest.raises(DriftError, match="wrong record"):
        decode_video(bitstream.write(h, records), model)
    out = decode_video(bitstream.write(h, records), model, allow_drift=True).video
    np.testing.assert_array_equal(out[:8], enc.video[:8])  # GOP 0 up to the changed boundary (frame 16)
    assert not np.array_equal(out[9:17], enc.video[9:17])


def test_malformed_side_payloads_are_bitstream_errors(model, encoded):
    enc = encoded["i2v"]
    h, records = bitstream.read(enc.stream)
    cases = {
        "junk anchor": lambda r: ((ANCHOR_TAG, b"\x00\x01junk"),) + r.side[1:],
        "missing anchor": lambda r: tuple(p for p in r.side if p[0] != ANCHOR_TAG),
        "junk residual": lambda r: tuple(p if p[0] != RESIDUAL_TAG else (RESIDUAL_TAG, b"\x07" * 5) for p in r.side),
        "two residuals": lambda r: r.side + tuple(p for p in r.side if p[0] == RESIDUAL_TAG),
        "unknown tag": lambda r: r.side + ((9, b"x"),),
    }
    for what, change in cases.items():
        recs = list(records)
        r = recs[0]
        recs[0] = bitstream.GopRecord(r.picks, r.latent_hash, change(r), r.atoms_per_frame)
        with pytest.raises(bitstream.BitstreamError):
            decode_video(bitstream.write(h, recs), model)
        print("refused:", what)


def test_anchored_variants_need_latent_conditioning(video):
    with pytest.raises(VariantError, match="latent"):
        encode_video(video[:GOP], 25.0, init_preset("tiny"), SAMPLER, gop_frames=GOP, variant="i2v")
