"""A batch of videos in one run (``encode_batch``, ``encode --batch``): each stream is the one the
video gets alone, and the waves hold one GOP of every video's chain."""
import json
import os

import numpy as np
import pytest
from conftest import FAST_I2V, GOP, SAMPLER, bikes, variant_for

from gvc_jax import cli
from gvc_jax import encode as encode_cli
from gvc_jax.codec.format import bitstream
from gvc_jax.codec.gop import loop
from gvc_jax.codec.gop.plan import ArrayReader, GopPlan
from gvc_jax.codec.session import encode_batch
from gvc_jax.io.video_writer import write_video

LENGTHS = (17, 9, 25)  # chains of 2, 1 and 3 GOPs


@pytest.fixture(scope="module")
def model(tiny_anchored):
    return tiny_anchored


@pytest.fixture(scope="module")
def clips():
    frames = bikes(56, 40, 60)
    return [frames[i * 5:i * 5 + n] for i, n in enumerate(LENGTHS)]


def _variant():
    return variant_for("i2v")


def test_batch_waves_hold_one_gop_of_every_chain(model, clips, monkeypatch):
    """(Each stream equals the video coded alone, for every variant on 1 device, 4 devices and 2
    processes: the topology matrix, test_topology.py.)"""
    waves = []
    real = loop.code_gops

    def spy(plan, *a, **kw):
        waves.append([[s.stream for s in w] for w in plan.waves()])
        return real(plan, *a, **kw)

    monkeypatch.setattr("gvc_jax.codec.session.code_gops", spy)
    results = encode_batch([ArrayReader(c, 25.0) for c in clips], model, SAMPLER, variant=_variant(), gop_frames=GOP)
    assert waves[0] == [[0, 1, 2], [0, 2], [2]]  # GOP k of every chain side by side
    assert [[g.index for g in res.gops] for res in results] == [[0, 1], [0], [0, 1, 2]]  # each GOP's own index


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
    fast = FAST_I2V
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
                 [str(src), "-o", str(tmp_path / "n"), "--batch", *fast, "--decoded", js],  # a file, not a directory
                 [str(tmp_path / "nothing"), "-o", str(tmp_path / "n"), "--batch", *fast]):
        assert cli.run_main(encode_cli.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "n").exists()


def test_batch_decoded_eval_compare_resume_and_target_bpp_equal_each_video_alone(clips, tmp_path, capsys):
    """``--batch`` takes every option one stream takes: each stream (fitted to --target-bpp, with a
    resume journal) is the stream of its video encoded alone, --decoded / --compare are written per
    video, --eval reports per video, and the journals are gone once the streams are written."""
    src = tmp_path / "videos"
    src.mkdir()
    for i, c in enumerate(clips[:2]):
        write_video(str(src / f"clip{i}.npy"), c, 25.0)
    fast = ["--model", "preset:tiny-anchored", "-K", "256", "--steps", "4", "--tail", "1", "--gop-frames", "9",
            "--variant", "i2v", "--anchor-codec", "webp", "--target-bpp", "0.12", "--resume", "--quiet"]
    out, dec, cmp_, js = tmp_path / "out", tmp_path / "dec", tmp_path / "cmp", str(tmp_path / "b.json")
    argv = [str(src), "-o", str(out), "--batch", *fast, "--decoded", str(dec), "--compare", str(cmp_), "--eval",
            "--json", js]
    assert cli.run_main(encode_cli.main, argv) == 0
    report = json.load(open(js))
    assert sorted(os.listdir(out)) == ["clip0.gvc", "clip1.gvc"]  # no journal left
    assert sorted(os.listdir(dec)) == ["clip0.mp4", "clip1.mp4"] and sorted(os.listdir(cmp_)) == ["clip0.png",
                                                                                                   "clip1.png"]
    for row in report["streams"]:
        assert row["psnr"] > 0 and 0 <= row["lpips"] <= 1 and row["target_bpp"] == 0.12
    for i in range(2):
        alone = tmp_path / f"alone{i}.gvc"
        assert cli.run_main(encode_cli.main, [str(src / f"clip{i}.npy"), "-o", str(alone), *fast]) == 0
        assert alone.read_bytes() == (out / f"clip{i}.gvc").read_bytes()
    streams = [(out / f"clip{i}.gvc").read_bytes() for i in range(2)]
    assert len({bitstream.read(s)[0].atoms_per_frame for s in streams}) == 2  # each video fitted on its own
