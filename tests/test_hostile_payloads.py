"""Hostile anchor and residual payloads: refused in one line, in bounded time and memory.

The big anchor payloads are real streams made here by the bundled ffmpeg from a flat picture
(a few kB however large the picture): an 8192x8192 12-bit HEVC picture, 2048x2048 VVC and AV1
pictures; WebP / AVIF headers of small images are rewritten to declare huge sizes.
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_within

from gvc_jax.codec.format.bits import BitstreamError
from gvc_jax.codec.payloads import anchors as A
from gvc_jax.codec.payloads import residual as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 96  # what the decoder expects
LIMIT_S = 120  # hang guards (each check takes well under a second): not timings
BIG = {"x265": (8192, "yuv420p12le", ["-preset", "ultrafast", "-x265-params", "qp=51:info=0:log-level=none"]),
       "vvenc": (2048, "yuv420p10le", ["-preset", "faster", "-qp", "63"]),
       "svtav1": (2048, "yuv420p", ["-preset", "8", "-crf", "63"])}


def _available(name):
    if not A.ANCHOR_CODECS[name].available():
        pytest.skip(f"{name} is not available on this machine")
    return A.ANCHOR_CODECS[name]


def _big_payload(name, tmp_path):
    """A payload of codec ``name`` holding one flat picture of BIG[name]'s size."""
    codec = _available(name)
    side, pix, options = BIG[name]
    out = tmp_path / f"big-{name}.bin"
    subprocess.run([A._ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"color=gray:s={side}x{side}", "-frames:v", "1", "-pix_fmt", pix, "-c:v", codec.encoder,
                    *options, "-f", codec.demuxer, "-y", str(out)],
                   check=True, timeout=120, env=dict(os.environ, SVT_LOG="1"))
    data = codec.compact(out.read_bytes())
    assert len(data) < 20_000
    return bytes([A.ANCHOR_CODEC_NAMES.index(name), 30]) + data


CHILD = r"""
import json, resource, sys
from gvc_jax.codec.payloads import anchors
from gvc_jax.codec.format.bits import BitstreamError
payload = open(sys.argv[1], "rb").read()
try:
    anchors.unpack_anchor(payload, int(sys.argv[2]), int(sys.argv[3]))
    error = None
except BitstreamError as e:
    error = str(e)
print(json.dumps({"error": error,
                  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork + exec from the parent
                  # (here a big pytest worker); VmHWM is this process's own peak
                  "self_mb": next(int(l.split()[1]) for l in open("/proc/self/status")
                                  if l.startswith("VmHWM:")) / 1024,
                  "children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _decode_in_child(payload, tmp_path):
    """unpack_anchor in a fresh process: its error and peak memory (its own, and ffmpeg's)."""
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(H), str(W)], capture_output=True,
                          timeout=300, env=env, cwd=ROOT)  # a hang guard
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def test_a_huge_hevc_anchor_is_refused_from_its_headers(tmp_path):
    """15 kB declaring 8192x8192 12-bit (a 201 MB decoded frame): the decoder refuses it before
    allocating the picture and nothing is buffered (was 0.87 GB and a traceback)."""
    payload = _big_payload("x265", tmp_path)
    got = _decode_in_child(payload, tmp_path)
    print(f"8192x8192 HEVC, {len(payload)} B: {got}")
    assert got["error"] and "\n" not in got["error"]
    assert "8192x8192" in got["error"] and f"expected {W}x{H}" in got["error"]
    assert got["self_mb"] < 200 and got["children_mb"] < 150  # one decoded frame alone is 201 MB


@pytest.mark.parametrize("name", ["vvenc", "svtav1"])
def test_huge_vvc_and_av1_anchors_are_refused_from_their_headers(tmp_path, name):
    payload = _big_payload(name, tmp_path)
    with pytest.raises(BitstreamError) as err:
        run_within(LIMIT_S, A.unpack_anchor, payload, H, W)
    assert "\n" not in str(err.value) and "declares a 2048x2048 picture" in str(err.value), err.value


def _webp_declaring(chunk, width, height):
    """A RIFF/WEBP file whose first chunk header declares width x height (and holds nothing else)."""
    if chunk == b"VP8 ":
        body = b"\x00\x00\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(8)
    elif chunk == b"VP8L":
        body = b"\x2f" + struct.pack("<I", (width - 1) | (height - 1) << 14) + bytes(8)
    else:
        body = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    riff = b"WEBP" + chunk + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


@pytest.mark.parametrize("chunk", [b"VP8 ", b"VP8L", b"VP8X"])
def test_huge_webp_headers_are_refused_before_pillow(chunk):
    _available("webp")
    data = _webp_declaring(chunk, 16383, 16383)
    assert A.webp_size(data) == (16383, 16383)
    with pytest.raises(BitstreamError, match="declares a 16383x16383 picture, expected 96x64") as err:
        run_within(LIMIT_S, A.unpack_anchor, bytes([A.ANCHOR_CODEC_NAMES.index("webp"), 30]) + data, H, W)
    assert "\n" not in str(err.value)
    with pytest.raises(BitstreamError, match="not a WebP"):
        A.unpack_anchor(bytes([A.ANCHOR_CODEC_NAMES.index("webp"), 30]) + b"RIFF" + bytes(40), H, W)


def test_a_huge_avif_header_is_refused_before_decoding(recwarn):
    _available("avif")
    payload = bytearray(A.pack_anchor("avif", 30, np.full((H, W, 3), 90, np.uint8)))
    at = payload.find(b"ispe")
    assert struct.unpack(">II", payload[at + 8:at + 16]) == (W, H)
    payload[at + 8:at + 16] = struct.pack(">II", 10000, 10000)  # 100 Mpixels: past Pillow's bomb warning
    with pytest.raises(BitstreamError, match="declares a 10000x10000 picture, expected 96x64") as err:
        A.unpack_anchor(bytes(payload), H, W)
    assert "\n" not in str(err.value) and not [w for w in recwarn if "DecompressionBomb" in str(w.category)]
    payload[at + 8:at + 16] = struct.pack(">II", 16384, 16384)  # past Pillow's bomb error: still one line
    with pytest.raises(BitstreamError) as err:
        A.unpack_anchor(bytes(payload), H, W)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", A.ANCHOR_CODEC_NAMES)
def test_a_payload_of_another_size_is_one_line(name):
    """Sizes within ffmpeg's -max_pixels slack are caught on the decoded frame's header."""
    _available(name)
    image = np.random.default_rng(1).integers(0, 255, (H + 16, W + 16, 3), dtype=np.uint8)
    payload = A.pack_anchor(name, 30, image)
    for h, w in ((H, W), (W + 16, H + 16)):
        with pytest.raises(BitstreamError, match="expected") as err:
            A.unpack_anchor(payload, h, w)
        assert "\n" not in str(err.value) and f"{W + 16}x{H + 16}" in str(err.value), err.value


def test_ffmpeg_output_is_capped_and_the_process_killed():
    """An endless stream is cut at the cap: the error comes at once, holding about the cap."""
    if not A._ffmpeg_components("decoders"):
        pytest.skip("no runnable ffmpeg")
    with pytest.raises(RuntimeError, match="passed the 1000000 bytes"):  # endless: a hang guard
        run_within(LIMIT_S, A._run_ffmpeg, ["-f", "lavfi", "-i", "color=gray:s=1024x1024", "-f", "rawvideo", "-"], b"",
                   1_000_000)


def test_ffmpeg_is_killed_at_the_deadline(monkeypatch):
    if not A._ffmpeg_components("decoders"):
        pytest.skip("no runnable ffmpeg")
    monkeypatch.setattr(A, "FFMPEG_TIMEOUT_S", 1)
    with pytest.raises(RuntimeError, match="more than 1 s"):  # one 16x16 frame a second, forever: a hang guard
        run_within(LIMIT_S, A._run_ffmpeg, ["-re", "-f", "lavfi", "-i", "color=gray:s=16x16:r=1", "-f", "rawvideo",
                                            "-"], b"", 1 << 30)


# ----------------------------------------------------------------------------------- residual

SHAPE = (6, 8, 4)


def _residual():
    return np.random.default_rng(0).laplace(0, 0.3, SHAPE).astype(np.float32)


@pytest.mark.parametrize("step", [65504.0, 1001.0, 1e-5, 0.0, -0.25, float("inf"), float("nan")])
def test_a_residual_step_outside_the_encoders_range_is_refused(step):
    payload = bytearray(R.encode_residual(_residual(), 0.25))
    payload[2:4] = struct.pack("<e", step)  # channel 0's step
    with pytest.raises(BitstreamError, match="step") as err:
        R.decode_residual(bytes(payload), SHAPE)
    assert "\n" not in str(err.value)
    with pytest.raises(R.ResidualError):
        R.encode_residual(_residual(), step)


@pytest.mark.parametrize("step", R.STEP_RANGE)
def test_the_encoders_extreme_steps_still_decode(step):
    r = _residual() * (1e-3 if step < 1 else 1e3)
    np.testing.assert_array_equal(R.decode_residual(R.encode_residual(r, step), SHAPE), R.reconstruct(r, step))
