"""GOP plans: spans, padding, waves of dependencies, streamed frame serving, emitted output."""
import numpy as np
import pytest

from gvc_jax.codec.gop.plan import ArrayReader, GopFrames, GopPlan, gop_frames_of


def _video(n):
    return (np.arange(n)[:, None, None, None] * np.ones((1, 2, 2, 3))).astype(np.int64)


@pytest.mark.parametrize("n", [1, 5, 9, 10, 33, 34, 66, 70, 100])
@pytest.mark.parametrize("hop", [9, 8])
def test_streamed_gop_frames_and_emitted_output_cover_the_video_once(n, hop):
    video = _video(n)
    plan = GopPlan.split(n, 9, hop=hop)
    reader = ArrayReader(video)
    serve = GopFrames(reader, plan)
    out = []
    for span in plan.spans:
        clip = serve(span)
        np.testing.assert_array_equal(clip, gop_frames_of(video, span))
        skip, count = plan.new_frames(span)
        out.append(clip[skip:skip + count])
    np.testing.assert_array_equal(np.concatenate(out), video)  # every frame once, in order
    assert reader._pos == n  # each source frame read exactly once
    for a, b in zip(plan.spans, plan.spans[1:], strict=False):
        assert b.start == a.start + hop


def test_padding_repeats_last_frame():
    video = _video(12)
    plan = GopPlan.split(12, 9)
    assert [(s.start, s.stop, s.pad) for s in plan.spans] == [(0, 9, 0), (9, 12, 6)]
    np.testing.assert_array_equal(gop_frames_of(video, plan.spans[1])[:, 0, 0, 0], [9, 10, 11] + [11] * 6)


def test_waves_follow_dependencies():
    independent = GopPlan.split(40, 9)
    assert [[s.index for s in w] for w in independent.waves()] == [[0, 1, 2, 3, 4]]
    chain = GopPlan.split(40, 9, chain=True)
    assert [[s.index for s in w] for w in chain.waves()] == [[0], [1], [2], [3], [4]]
    assert chain.spans[2].depends_on == (1,) and chain.spans[2].anchors == (17,)
    assert chain.last_use() == {0: 1, 1: 2, 2: 3, 3: 4}


def test_a_dependency_must_be_an_earlier_gop():
    plan = GopPlan.split(20, 9)
    bad = plan.spans[0].__class__(0, 0, 9, 9, depends_on=(1,))
    with pytest.raises(ValueError, match="earlier"):
        GopPlan(20, 9, (bad,) + plan.spans[1:])


@pytest.mark.parametrize("g", [0, 2, 8, 32])
def test_gop_length_must_be_4k_plus_1(g):
    with pytest.raises(ValueError):
        GopPlan.split(40, g)


def test_no_frames():
    with pytest.raises(ValueError):
        GopPlan.split(0, 33)


def test_a_reader_that_ends_early_is_an_error():
    plan = GopPlan.split(20, 9)
    serve = GopFrames(ArrayReader(_video(12)), plan)
    serve(plan.spans[0])
    with pytest.raises(ValueError, match="ended"):
        serve(plan.spans[1])
