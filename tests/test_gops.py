"""GOP plans: spans, padding and reassembly."""
import numpy as np
import pytest

from gvc_jax.codec.gops import assemble, gop_frames_of, plan_gops


@pytest.mark.parametrize("n", [1, 5, 33, 34, 66, 70, 100])
@pytest.mark.parametrize("variant", ["t2v", "flf2v"])
def test_split_and_assemble_roundtrip(n, variant):
    video = np.arange(n)[:, None, None, None] * np.ones((1, 2, 2, 3), np.int64)
    spans = plan_gops(n, 9, variant)
    clips = [gop_frames_of(video, s) for s in spans]
    assert all(c.shape[0] == 9 for c in clips)
    np.testing.assert_array_equal(assemble(clips, spans, n), video)
    if variant == "flf2v":
        for a, b in zip(spans, spans[1:]):
            assert b.start == a.start + 8  # one shared boundary frame
    else:
        assert sum(s.stop - s.start for s in spans) == n


def test_padding_repeats_last_frame():
    video = np.arange(12)[:, None, None, None] * np.ones((1, 1, 1, 3))
    spans = plan_gops(12, 9)
    assert [(s.start, s.stop, s.pad) for s in spans] == [(0, 9, 0), (9, 12, 6)]
    np.testing.assert_array_equal(gop_frames_of(video, spans[1])[:, 0, 0, 0], [9, 10, 11] + [11] * 6)


@pytest.mark.parametrize("g", [0, 2, 8, 32])
def test_gop_length_must_be_4k_plus_1(g):
    with pytest.raises(ValueError):
        plan_gops(40, g)


def test_no_frames():
    with pytest.raises(ValueError):
        plan_gops(0, 33)
