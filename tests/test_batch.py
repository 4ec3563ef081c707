"""A batch of videos in one run (``encode_batch``, ``encode --batch``): each stream is the one the
video gets alone, and the waves hold one GOP of every video's chain."""
import json
import os

import numpy as np
import pytest

from gvc_jax import cli
from gvc_jax import encode as encode_cli
from gvc_jax.codec.gop import loop
from gvc_jax.codec.gop.plan import ArrayReader, GopPlan
from gvc_jax.codec.gop.variants import I2V
from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.codec.session import decode_video, encode_batch, encode_video
from gvc_jax.io.sample_clips import sample_clip_path
from gvc_jax.io.video_reader import read_video
from gvc_jax.io.video_writer import write_video
from gvc_jax.models.registry import init_preset

SAMPLER = SamplerConfig(steps=4, tail=1, g_scale=3.0, shift=3.0, K=256, atoms_per_frame=(3, 3, 6), seed=5)
GOP = 9
LENGTHS = (17, 9, 25)  # chains of 2, 1 and 3 GOPs


@pytest.fixture(scope="module")
def model():
    return init_preset("tiny-anchored")


@pytest.fixture(scope="module")
def clips():
    frames, _ = read_video(sample_clip_path("bikes"), resize=(56, 40), max_frames=60)
    return [frames[i * 5:i * 5 + n] for i, n in enumerate(LENGTHS)]


def _variant():
    return I2V(anchor_codec="webp", anchor_quality=60, residual_step=0.25)


def test_batch_streams_equal_the_streams_coded_alone(model, clips, monkeypatch):
    waves = []
    real = loop.code_gops

    def spy(plan, *a, **kw):
        waves.append([[s.stream for s in w] for w in plan.waves()])
        return real(plan, *a, **kw)

    monkeypatch.setattr("gvc_jax.codec.session.code_gops", spy)
    results = encode_batch([ArrayReader(c, 25.0) for c in clips], model, SAMPLER, variant=_variant(), gop_frames=GOP)
    assert waves[0] == [[0, 1, 2], [0, 2], [2]]  # GOP k of every chain side by side
    monkeypatch.setattr("gvc_jax.codec.session.code_gops", real)
    for clip, res in zip(clips, results):
        alone = encode_video(clip, 25.0, model, SAMPLER, gop_frames=GOP, variant=_variant())
        assert res.stream == alone.stream
        assert [g.index for g in res.gops] == list(range(len(alone.gops)))
        assert not any(g.drift for g in decode_video(res.stream, model).gops)


def test_batch_plan_keeps_each_gops_own_index(model):
    plans = [_variant().plan(n, GOP) for n in LENGTHS]
    plan, offsets = GopPlan.batch(plans)
    assert offsets == (0, 17, 26)
    assert [(s.stream, s.in_stream) for s in plan.spans] == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert plan.spans[4].depends_on == (3,) and plan.spans[4].anchors == (26 + 8,)
    assert _variant().coded_anchors(plan.spans[2]) == (17,)  # the first GOP of video 1 carries its anchor


def test_batch_refuses_videos_of_different_sizes(model, clips):
    with pytest.raises(ValueError, match="one coded size"):
        encode_batch([ArrayReader(clips[0]), ArrayReader(np.zeros((9, 64, 80, 3), np.uint8))], model, SAMPLER,
                     gop_frames=GOP)


def test_batch_from_the_command_line(model, clips, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    for i, c in enumerate(clips[:2]):
        write_video(str(src / f"clip{i}.npy"), c, 25.0)
    (src / "notes.txt").write_text("not a video")
    fast = ["--model", "preset:tiny-anchored", "-K", "256", "-M", "3", "--steps", "4", "--tail", "1",
            "--gop-frames", "9", "--variant", "i2v", "--anchor-codec", "webp", "--quiet"]
    out, js = tmp_path / "out", str(tmp_path / "b.json")
    assert cli.run_main(encode_cli.main, [str(src), "-o", str(out), "--batch", *fast, "--json", js]) == 0
    report = json.load(open(js))
    assert report["videos"] == 2 and sorted(os.listdir(out)) == ["clip0.gvc", "clip1.gvc"]
    assert report["bytes"] == sum(os.path.getsize(out / n) for n in os.listdir(out))
    # a list file with a relative path codes the same stream
    (tmp_path / "list.txt").write_text("# one video\nvideos/clip1.npy\n")
    out2 = tmp_path / "out2"
    assert cli.run_main(encode_cli.main, [str(tmp_path / "list.txt"), "-o", str(out2), "--batch", *fast]) == 0
    assert (out2 / "clip1.gvc").read_bytes() == (out / "clip1.gvc").read_bytes()
    capsys.readouterr()
    for argv in ([str(src), "-o", str(out), "--batch", *fast],            # would replace a stream
                 [str(src), "-o", str(tmp_path / "n"), "--batch", *fast, "--eval"],
                 [str(tmp_path / "nothing"), "-o", str(tmp_path / "n"), "--batch", *fast]):
        assert cli.run_main(encode_cli.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "n").exists()
