"""Command-line encode / decode as a user runs them: outputs, JSON, one-line errors, no partial files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_T2V as FAST  # the clip: conftest's ``clip`` (11 frames of 52x36, two GOPs)

from gvc_jax import cli
from gvc_jax import decode as decode_cli
from gvc_jax import encode as encode_cli
from gvc_jax.io.video_reader import read_video


def run(main, argv):
    return cli.run_main(main, argv)


def test_encode_decode_roundtrip(clip, tmp_path, capsys):
    gvc, rec, js = str(tmp_path / "a.gvc"), str(tmp_path / "rec.npy"), str(tmp_path / "enc.json")
    assert run(encode_cli.main, [clip, "-o", gvc, *FAST, "--eval", "--decoded", rec, "--json", js]) == 0
    report = json.load(open(js))
    assert report["bytes"] == os.path.getsize(gvc) > 0
    assert report["bpp"] == pytest.approx(8 * report["bytes"] / (11 * 52 * 36))
    assert report["gops"] == 2 and {"psnr", "ms_ssim", "lpips"} <= set(report)
    out = str(tmp_path / "out.npy")
    assert run(decode_cli.main, [gvc, "-o", out, "--model", "preset:tiny", "--quiet", "--strict",
                                 "--reference", clip, "--json", "-"]) == 0
    decoded, _ = read_video(out)  # .npy keeps exact pixels (no fps)
    assert decoded.shape == (11, 36, 52, 3)
    np.testing.assert_array_equal(decoded, read_video(rec)[0])  # decoder == encoder's reconstruction
    printed = capsys.readouterr().out
    dec_report = json.loads(printed[printed.index("{"):])
    assert dec_report["drifted_gops"] == [] and dec_report["fps"] == report["fps"]


def test_errors_are_one_line_and_leave_no_file(clip, tmp_path, capsys):
    gvc = str(tmp_path / "x.gvc")
    cases = [
        (encode_cli.main, [str(tmp_path / "missing.mp4"), "-o", gvc, *FAST]),
        (encode_cli.main, [clip, "-o", gvc, *FAST[:-3], "--gop-frames", "8", "--quiet"]),
        (encode_cli.main, [clip, "-o", gvc, "--model", str(tmp_path / "nomodel"), "--quiet"]),
        (encode_cli.main, [clip, "-o", gvc, *FAST, "--max-frames", "0"]),
    ]
    bad_stream = tmp_path / "bad.gvc"
    bad_stream.write_bytes(b"GVC\x01garbage")
    cases.append((decode_cli.main, [str(bad_stream), "-o", str(tmp_path / "o.npy"), "--model", "preset:tiny"]))
    for main, argv in cases:
        assert run(main, argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert not os.path.exists(gvc) and not os.path.exists(tmp_path / "o.npy")
    assert sorted(os.listdir(tmp_path)) == ["bad.gvc"]  # no temporary files left behind


def test_decode_with_another_model_is_refused(clip, tmp_path, capsys):
    gvc = str(tmp_path / "a.gvc")
    assert run(encode_cli.main, [clip, "-o", gvc, *FAST, "--max-frames", "5"]) == 0
    assert run(decode_cli.main, [gvc, "-o", str(tmp_path / "o.npy"), "--model", "preset:tiny-i2v"]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.npy")


def test_help_runs_as_module():
    for mod in ("gvc_jax.encode", "gvc_jax.decode"):
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, check=True)
        assert "--model" in out.stdout


@pytest.mark.parametrize("extra,needle", [
    (["--g-scale", "nan"], "g_scale"), (["--shift", "1e-40"], "shift"),
    (["--steps", "1001", "--tail", "1000"], "steps"),
    (["-K", str((1 << 24) + 1)], "K"), (["--tail", "0"], "tail"), (["--gop-frames", "4101"], "gop_frames"),
    (["--variant", "v2v"], "variant"), (["--decoded", "x.webm"], "x.webm"), (["--compare", "c.jpg"], "compare"),
    (["--json", "nodir/r.json"], "nodir"), (["-o", "nodir/a.gvc"], "nodir"), (["--decoded", "a.gvc"], "two"),
])
def test_every_option_and_output_is_checked_before_the_input_is_read(tmp_path, capsys, extra, needle):
    """The input does not exist: an option or output error must be reported first, with nothing written."""
    argv = [str(tmp_path / "missing.mp4"), "-o", "a.gvc", "--model", "preset:tiny", "--quiet", *extra]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert run(encode_cli.main, argv) == 2
    finally:
        os.chdir(old)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "missing.mp4" not in err[0], err
    assert os.listdir(tmp_path) == []


def test_decode_into_a_non_empty_directory_is_refused_and_leaves_it_untouched(clip, tmp_path, capsys):
    gvc = str(tmp_path / "a.gvc")
    assert run(encode_cli.main, [clip, "-o", gvc, *FAST, "--max-frames", "5"]) == 0
    d = tmp_path / "results"
    d.mkdir()
    (d / "keep.txt").write_bytes(b"precious")
    assert run(decode_cli.main, [gvc, "-o", str(d), "--model", "preset:tiny", "--quiet"]) == 2
    assert "non-empty" in capsys.readouterr().err
    assert os.listdir(d) == ["keep.txt"] and (d / "keep.txt").read_bytes() == b"precious"
    empty = tmp_path / "frames"
    empty.mkdir()
    assert run(decode_cli.main, [gvc, "-o", str(empty), "--model", "preset:tiny", "--quiet"]) == 0
    assert len(os.listdir(empty)) == 5


def test_anchored_variants_from_the_command_line(clip, tmp_path, capsys):
    """flf2v and i2v as a user runs them: the report splits the rate, --free-first-frame is
    labelled, --target-bpp lands within 5 %, and the decoder reproduces the reconstruction."""
    anchored = ["--model", "preset:tiny-anchored", *FAST[2:], "--anchor-codec", "webp", "--anchor-quality", "50"]
    gvc, rec, js = str(tmp_path / "i.gvc"), str(tmp_path / "rec.npy"), str(tmp_path / "i.json")
    assert run(encode_cli.main, [clip, "-o", gvc, *anchored, "--variant", "i2v", "--tail-atoms", "6",
                                 "--free-first-frame", "--decoded", rec, "--json", js]) == 0
    report = json.load(open(js))
    assert report["variant"] == "i2v" and report["anchor_bytes"] > 0 and report["residual_bytes"] > 0
    assert report["atoms_per_frame"] == [3, 3, 6]
    assert report["accounting"].startswith("free first frame")
    assert report["bytes_charged"] == report["bytes"] - report["first_anchor_bytes"]
    assert sum(report[k] for k in ("codebook_bytes", "anchor_bytes", "residual_bytes", "overhead_bytes")) \
        == report["bytes"] == os.path.getsize(gvc)
    out = str(tmp_path / "out.npy")
    assert run(decode_cli.main, [gvc, "-o", out, "--model", "preset:tiny-anchored", "--quiet", "--strict"]) == 0
    np.testing.assert_array_equal(read_video(out)[0], read_video(rec)[0])
    js2 = str(tmp_path / "f.json")
    assert run(encode_cli.main, [clip, "-o", str(tmp_path / "f.gvc"), *anchored, "--variant", "flf2v",
                                 "--target-bpp", "3.0", "-K", "4096", "--json", js2]) == 0
    report = json.load(open(js2))
    assert -5 <= report["target_error_pct"] <= 0, report
    capsys.readouterr()
    for bad in (["--anchor-codec", "jpeg2000"], ["--anchor-quality", "101"], ["--residual-step", "-1"],
                ["--target-bpp", "0"], ["--tail-frames", "-1"]):
        assert run(encode_cli.main, [clip, "-o", str(tmp_path / "x.gvc"), *anchored, "--variant", "i2v", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (bad, err)
    assert not os.path.exists(tmp_path / "x.gvc")


def test_codec_flags_are_generated_from_the_options():
    """Every CodecOptions field has its flag (declared with the field, nowhere else); a preset is
    overridden by exactly the flags given."""
    from gvc_jax import api

    parser = encode_cli.build_parser()
    dests = {a.dest: a for a in parser._actions}
    for f in api.option_fields():
        assert f.name in dests and tuple(dests[f.name].option_strings) == f.metadata["flags"], f.name
        assert dests[f.name].default is None
    args = parser.parse_args(["in.mp4", "-o", "o.gvc", "--preset", "low-rate", "--steps", "7", "-K", "4096",
                              "--variant", "i2v", "--x0-cache", "alternate"])
    options = api.CodecOptions.from_args(args, args.preset)
    assert options == api.CodecOptions.preset("low-rate", steps=7, codebook_size=4096, variant="i2v",
                                               x0_cache="alternate")
    assert options.atoms == 16  # from the preset: -M was not given


def test_demo_honours_devices(tmp_path):
    """The demo accepts --devices (and the codec flags) and uses them: two of four CPU devices. (The
    codec flags and the host device count are those of the topology matrix's 4-device run, which codes
    T2V on 2 of its 4 devices too: after it, this run's programs come from the suite's compilation cache.)"""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-m", "gvc_jax.demo", "--model", "preset:tiny", "--frames", "17",
                          "--resize", "64x48", "--steps", "4", "--tail", "1", "-K", "256", "-M", "2",
                          "--gop-frames", "9", "--variants", "t2v", "--devices", "2", "--quiet",
                          "--out", str(tmp_path / "demo"), "--json", str(tmp_path / "demo.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 device(s)" in out.stdout
    report = json.load(open(tmp_path / "demo.json"))
    assert [r["bit_exact"] for r in report["variants"]] == [True]
