"""Hostile inputs at the edges of encode / decode: outputs that collide with inputs, streams that
lie about their length, wrong (swapped) records, multi-host start-up, escape sequences, and
``decode --conceal`` of damaged and cut streams for every variant.

Every refusal is checked the way a user meets it: one ``error:`` line on stderr, exit status 2,
in bounded time, and no existing file changed (hashes before and after)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST_CODEC as FAST
from conftest import FAST_T2V as T2V

from gvc_jax import cli
from gvc_jax import decode as decode_cli
from gvc_jax import encode as encode_cli
from gvc_jax.codec.format import bitstream
from gvc_jax.io.video_reader import read_video

ANCHORED = ["--model", "preset:tiny-anchored", *FAST, "--anchor-codec", "webp", "--anchor-quality", "50"]
MODEL_OF = {"t2v": "preset:tiny", "flf2v": "preset:tiny-anchored", "i2v": "preset:tiny-anchored"}


@pytest.fixture(scope="module")
def clip(clip25):
    """conftest's ``clip25``: three GOPs of 9 frames (T2V) or of 9 frames every 8 (FLF2V, I2V)."""
    return clip25


@pytest.fixture(scope="module")
def streams(clip, tmp_path_factory):
    """variant -> (stream path, the encoder's reconstruction)."""
    d = tmp_path_factory.mktemp("streams")
    out = {}
    for variant in ("t2v", "flf2v", "i2v"):
        gvc, rec = str(d / f"{variant}.gvc"), str(d / f"{variant}_rec.npy")
        opts = T2V if variant == "t2v" else [*ANCHORED, "--variant", variant]
        assert cli.run_main(encode_cli.main, [clip, "-o", gvc, *opts, "--decoded", rec]) == 0
        out[variant] = (gvc, read_video(rec)[0])
    return out


def _digest(*paths):
    return {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths if os.path.isfile(p)}


def _one_error(capsys, needle=""):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0], err
    return err[0]


# ----------------------------------------------------------------------------- outputs vs inputs

def test_an_output_never_overwrites_an_input(clip, tmp_path, capsys, within):
    """-o, --decoded, --json onto the input (same path, a symlink, a hard link), an output inside
    a frame-directory input, the decoder's video onto its stream or reference: refused up front."""
    link, hard = str(tmp_path / "link.npy"), str(tmp_path / "hard.npy")
    os.symlink(clip, link)
    os.link(clip, hard)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    before = _digest(clip)
    gvc = str(tmp_path / "ok.gvc")
    cases = [
        [clip, "-o", clip],
        [clip, "-o", gvc, "--decoded", clip],
        [clip, "-o", gvc, "--json", clip],
        [clip, "-o", link],
        [link, "-o", gvc, "--decoded", clip],
        [clip, "-o", hard],
        [clip, "-o", gvc, "--json", hard],
        [str(frames_dir), "-o", str(frames_dir / "x.gvc")],
    ]
    for argv in cases:  # refused before any work: a hang guard, not a timing
        assert within(120, cli.run_main, encode_cli.main, [*argv, *T2V]) == 2, argv
        _one_error(capsys, "refusing to")
    assert _digest(clip) == before and not os.path.exists(gvc)
    # the decoder: its video onto the stream, onto the reference, --json onto the stream
    assert cli.run_main(encode_cli.main, [clip, "-o", gvc, *T2V, "--max-frames", "9"]) == 0
    capsys.readouterr()
    stream_before = _digest(gvc, clip)
    for argv in ([gvc, "-o", str(tmp_path / "o.npy"), "--json", gvc], [gvc, "-o", clip, "--reference", clip]):
        assert cli.run_main(decode_cli.main, [*argv, "--model", "preset:tiny", "--quiet"]) == 2
        _one_error(capsys, "refusing to")
    assert _digest(gvc, clip) == stream_before


def test_an_unwritable_output_is_found_before_any_work(clip, tmp_path, capsys, within):
    """A directory where files cannot be created (``/proc``; for root ``os.access`` says yes)."""
    assert within(120, cli.run_main, encode_cli.main, [clip, "-o", "/proc/x.gvc", *T2V]) == 2  # a hang guard
    _one_error(capsys, "/proc")
    assert not [n for n in os.listdir(tmp_path)]


def test_batch_outputs_never_overwrite_its_videos(clip, tmp_path, capsys):
    """A batch writes OUTPUT/NAME.gvc: with OUTPUT the input directory, NAME.gvc is refused if it is
    one of the batch's own inputs (here a list file naming a .gvc-named video)."""
    d = tmp_path / "videos"
    d.mkdir()
    video = d / "a.npy"
    video.write_bytes(open(clip, "rb").read())
    before = _digest(str(video))
    assert cli.run_main(encode_cli.main, [str(d), "-o", str(d), "--batch", *T2V]) == 2
    _one_error(capsys, "refusing to write there")
    assert _digest(str(video)) == before and sorted(os.listdir(d)) == ["a.npy"]


# ----------------------------------------------------------------------------- lying streams

def test_a_tiny_stream_declaring_2_24_frames_is_refused_at_once(streams, tmp_path, capsys, within):
    """A header of 2^24 frames in 5-frame GOPs and no records: refused from the file size and the
    GOP count before any plan is built (it used to build millions of spans), with --conceal too."""
    h, _ = bitstream.read_header(open(streams["t2v"][0], "rb").read())
    for num_gops in (1, (1 << 24) // 9 + 1):
        forged = bitstream._encode_header_fields(h.replace(num_frames=1 << 24, num_gops=num_gops))
        path = tmp_path / f"lie{num_gops}.gvc"
        path.write_bytes(forged)
        for extra in ([], ["--conceal"]):
            out = tmp_path / "o.npy"
            # a hang guard (building millions of spans would not finish), not a timing
            assert within(120, cli.run_main, decode_cli.main, [str(path), "-o", str(out), "--model", "preset:tiny",
                                                               "--quiet", *extra]) == 2
            _one_error(capsys)
            assert not out.exists()
    # the same as a separate process, its peak memory measured (VmHWM: ru_maxrss would carry the pytest
    # worker's over fork + exec): about what importing JAX costs
    probe = ("import runpy, sys\n"
             "sys.argv = ['decode', sys.argv[1], '-o', sys.argv[2], '--model', 'preset:tiny', '--quiet']\n"
             "try:\n    runpy.run_module('gvc_jax.decode', run_name='__main__')\n"
             "finally:\n    print('maxrss_kb', next(int(l.split()[1]) for l in open('/proc/self/status')\n"
             "                                 if l.startswith('VmHWM:')), file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(path), str(tmp_path / "o.npy")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # a hang guard
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[0].startswith("error: ") and len(lines) == 2, lines
    assert int(lines[1].split()[1]) < 1_000_000, lines


def _v1_stream(stream: bytes, order) -> bytes:
    """``stream`` re-framed as format version 1 (records not bound to their position), its records
    in ``order``."""
    h, records = bitstream.read(stream)
    h1 = h.replace(version=1)
    bodies = [bitstream._encode_body(h1, records[g]) for g in order]
    return bitstream._encode_header_fields(h1) + b"".join(bitstream.frame_body(h1, g, b) for g, b in enumerate(bodies))


def test_swapped_v1_records_are_an_error_not_a_warning(streams, tmp_path, capsys):
    """A v1 stream with GOPs 1 and 2 swapped passes its CRCs; GOP 0 reproduces its latent exactly,
    so the drift of GOP 1 is a wrong record, not the platform: exit 2 and no video (``--allow-drift``
    decodes it with a warning). The unswapped v1 stream decodes cleanly; a swapped v2 stream fails
    its position-bound CRC."""
    stream = open(streams["t2v"][0], "rb").read()
    good, swapped = tmp_path / "v1.gvc", tmp_path / "v1swap.gvc"
    good.write_bytes(_v1_stream(stream, [0, 1, 2]))
    swapped.write_bytes(_v1_stream(stream, [0, 2, 1]))
    out = tmp_path / "o.npy"
    base = ["--model", "preset:tiny", "--quiet"]
    assert cli.run_main(decode_cli.main, [str(good), "-o", str(out), *base]) == 0
    np.testing.assert_array_equal(read_video(str(out))[0], streams["t2v"][1])
    os.remove(out)
    capsys.readouterr()
    assert cli.run_main(decode_cli.main, [str(swapped), "-o", str(out), *base]) == 2
    _one_error(capsys, "wrong record")
    assert not out.exists()
    assert cli.run_main(decode_cli.main, [str(swapped), "-o", str(out), *base, "--allow-drift"]) == 0
    assert "differs from the encoder's" in capsys.readouterr().err
    _, records = bitstream.read(stream)
    h, _ = bitstream.read_header(stream)
    v2swap = tmp_path / "v2swap.gvc"
    v2swap.write_bytes(bitstream._encode_header_fields(h) + b"".join(
        bitstream.record_bytes(h, r, records[r]) for r in (0, 2, 1)))
    assert cli.run_main(decode_cli.main, [str(v2swap), "-o", str(out) + ".npy", *base]) == 2
    _one_error(capsys, "CRC mismatch")


# ----------------------------------------------------------------------------- concealment

def _record_spans(stream: bytes):
    _, records = bitstream.open_stream(stream)
    return [(int(s), int(n)) for s, n in records._spans]


@pytest.mark.parametrize("variant", ["t2v", "flf2v", "i2v"])
def test_conceal_a_flipped_record_and_a_cut_stream(streams, variant, tmp_path, capsys):
    """One flipped bit in GOP 1's record, and the file cut inside GOP 1: without --conceal a clean
    error and no output; with it the full-length video, GOP 0 exactly the encoder's, the concealed
    GOPs listed in the report, exit 3."""
    path, reference = streams[variant]
    stream = open(path, "rb").read()
    spans = _record_spans(stream)
    start, length = spans[1]
    flipped = bytearray(stream)
    flipped[start + length // 2] ^= 0x10
    cases = {"flipped": (bytes(flipped), [1]), "cut": (stream[:start + length // 2], [1, 2])}
    model = ["--model", MODEL_OF[variant], "--quiet"]
    for name, (data, lost) in cases.items():
        damaged = tmp_path / f"{name}.gvc"
        damaged.write_bytes(data)
        out, js = tmp_path / f"{name}.npy", tmp_path / f"{name}.json"
        assert cli.run_main(decode_cli.main, [str(damaged), "-o", str(out), *model]) == 2
        _one_error(capsys)
        assert not out.exists()
        argv = [str(damaged), "-o", str(out), *model, "--conceal", "--json", str(js)]
        assert cli.run_main(decode_cli.main, argv) == 3
        err = capsys.readouterr().err
        assert f"GOPs {lost} were damaged or missing" in err, err
        video = read_video(str(out))[0]
        assert video.shape == reference.shape
        report = json.load(open(js))
        assert report["concealed_gops"] == lost
        np.testing.assert_array_equal(video[:8], reference[:8])  # GOP 0 is intact
        if variant == "t2v" and name == "flipped":  # independent GOPs: GOP 2 is untouched too
            assert report["affected_gops"] == []
            np.testing.assert_array_equal(video[18:], reference[18:])
        if variant != "t2v" and name == "flipped":  # GOP 2 conditions on a concealed frame
            assert report["affected_gops"] == [2]
        # the concealed GOP 1 (new frames 9-16 or 9-17) freezes one frame: the last decoded frame before
        # it (t2v, i2v) or the decoded anchor image of its first frame (flf2v)
        frozen = video[9:17]
        assert (frozen == frozen[0]).all()
        if variant != "flf2v":
            assert (frozen == video[8]).all()


def test_conceal_needs_a_quarter_of_the_stream(streams, tmp_path, capsys):
    stream = open(streams["t2v"][0], "rb").read()
    h, size = bitstream.read_header(stream)
    path = tmp_path / "stub.gvc"
    path.write_bytes(stream[:size + 2])
    assert cli.run_main(decode_cli.main, [str(path), "-o", str(tmp_path / "o.npy"), "--model", "preset:tiny",
                                          "--quiet", "--conceal"]) == 2
    _one_error(capsys, "too little to conceal")


# ----------------------------------------------------------------------------- multi-host, text

def test_coordinator_address_and_init_timeout(tmp_path, capsys):
    for bad in ("no such host:99999", "host", "host:0", ":80", "host:http"):
        assert cli.run_main(decode_cli.main, ["x.gvc", "-o", "o.npy", "--distributed", "--coordinator", bad,
                                              "--num-processes", "2", "--process-id", "1"]) == 2
        _one_error(capsys, "--coordinator must be HOST:PORT")
    for bad in ("0", "-1", "nan"):
        assert cli.run_main(decode_cli.main, ["x.gvc", "-o", "o.npy", "--init-timeout", bad]) == 2
        _one_error(capsys, "--init-timeout")
    assert cli.parse_coordinator("[::1]:1234") == ("::1", 1234)
    # a peer that never comes: one line and exit 2 within the timeout (not JAX's 300 s and an abort)
    # (the process's own timeout is the hang guard: under JAX's 300 s, so its default would fail too)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "gvc_jax.decode", "x.gvc", "-o", str(tmp_path / "o.npy"),
                           "--distributed", "--coordinator", "127.0.0.1:9", "--num-processes", "2",
                           "--process-id", "1", "--init-timeout", "3"], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--init-timeout 3" in lines[0], lines
    assert not os.listdir(tmp_path)


def test_control_characters_are_escaped(tmp_path, capsys):
    """A prompt, a path or a stream field can hold escape sequences; what is printed shows them escaped."""
    evil = "a\x1b[2J\x1b]0;pwned\x07b\nc"
    assert cli.printable(evil) == "a\\x1b[2J\\x1b]0;pwned\\x07b\\nc"
    cli.print_table({"prompt": evil})
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 1
    assert cli.run_main(encode_cli.main, [str(tmp_path / "in\x1b[31m.mp4"), "-o", str(tmp_path / "o.gvc"), *T2V]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and err.startswith("error: ")
