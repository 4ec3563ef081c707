"""Tests for experiments.datasets: YUV -> RGB conversion, file-name parsing, tfds builders, loader, errors.

Tiny synthetic test sets (64x48, a few frames) named like the official UVG / MCL-JCV / HEVC class B
files are built into tmp directories and read back without TensorFlow.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/ lives at the root

from experiments.datasets import DATASETS, common, load_clips, prepare  # noqa: E402
from experiments.datasets.hevcb import HevcB, parse_hevcb_filename  # noqa: E402
from experiments.datasets.mcljcv import MclJcv, parse_mcljcv_filename  # noqa: E402
from experiments.datasets.uvg import Uvg, parse_uvg_filename  # noqa: E402
from gvc_jax import pixels  # noqa: E402
from gvc_jax.io.ffmpeg import ffmpeg_exe  # noqa: E402
from gvc_jax.io.video_reader import read_video  # noqa: E402
from gvc_jax.io.video_writer import write_video  # noqa: E402

W, H = 64, 48


def _planes(frames: int, seed: int):
    """Smooth, moving, colourful 8-bit 4:2:0 planes (+ mild luma noise): Y [F,H,W], Cb/Cr [F,H/2,W/2]."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    y, x = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    cy, cx = np.arange(H // 2)[None, :, None], np.arange(W // 2)[None, None, :]
    luma = 126 + 90 * np.sin(2 * np.pi * (x / W + t / 7 + seed / 3)) * np.cos(2 * np.pi * y / H)
    cb = 128 + 80 * np.sin(2 * np.pi * (0.7 * cx / (W / 2) + 0.3 * cy / (H / 2) + t / 5))
    cr = 128 + 80 * np.cos(2 * np.pi * (0.8 * cy / (H / 2) - 0.2 * cx / (W / 2) + t / 9 + seed / 5))
    luma = luma + rng.normal(0, 3, luma.shape)
    return tuple(np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (luma, cb, cr))


def _write_yuv(path, planes) -> None:
    y, u, v = planes
    with open(path, "wb") as f:
        for i in range(y.shape[0]):
            f.write(y[i].tobytes() + u[i].tobytes() + v[i].tobytes())


def _rgb_clip(frames: int) -> np.ndarray:
    t = np.arange(frames)[:, None, None]
    y, x = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    r = 128 + 100 * np.sin(2 * np.pi * (x / W + t / 8))
    g = 128 + 100 * np.cos(2 * np.pi * (y / H - t / 10))
    b = 128 + 60 * np.sin(2 * np.pi * (x + y) / (H + W))
    return np.stack(np.broadcast_arrays(r, g, b), -1).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def uvg_dir(tmp_path_factory):
    """A UVG-like manual dir: 2 raw YUV files (5 frames), one mp4 (4 frames), one unrelated file."""
    root = tmp_path_factory.mktemp("uvg_manual")
    planes = {"Beauty": _planes(5, 1), "HoneyBee": _planes(5, 2)}
    _write_yuv(root / f"Beauty_{W}x{H}_120fps_420_8bit_YUV.yuv", planes["Beauty"])
    (root / "sub").mkdir()
    _write_yuv(root / "sub" / f"HoneyBee_{W}x{H}_50fps_420_8bit_YUV.yuv", planes["HoneyBee"])
    write_video(root / "Extra.mp4", _rgb_clip(4), 25)
    (root / "README.txt").write_text("not a clip")
    return root, planes


@pytest.fixture(scope="module")
def uvg_data(tmp_path_factory, uvg_dir):
    """(data_dir, clips) after building the native UVG config once through load_clips."""
    data_dir = tmp_path_factory.mktemp("uvg_data")
    clips = list(load_clips("uvg", str(data_dir), manual_dir=str(uvg_dir[0])))
    return data_dir, clips


# ----------------------------------------------------------------------------- colour conversion


def test_yuv_to_rgb_matches_ffmpeg_bt709_limited_left_sited(tmp_path):
    planes = _planes(3, 0)
    path = tmp_path / "clip.yuv"
    _write_yuv(path, planes)
    vf = "scale=in_color_matrix=bt709:in_range=tv:out_range=pc:in_chroma_loc=left"
    vf += ":flags=bilinear+accurate_rnd+full_chroma_int,format=rgb24"
    cmd = [ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{W}x{H}",
           "-i", str(path), "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout
    ref = np.frombuffer(out, np.uint8).reshape(3, H, W, 3).astype(int)
    diff = np.abs(common.yuv420_to_rgb(*planes).astype(int) - ref)
    assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())
    # a BT.601 matrix would be far off: the comparison can fail
    cmd601 = [c.replace("bt709", "bt601") for c in cmd]
    ref601 = np.frombuffer(subprocess.run(cmd601, capture_output=True, check=True).stdout, np.uint8)
    assert np.abs(common.yuv420_to_rgb(*planes).astype(int).ravel() - ref601).max() > 10


def test_yuv_to_rgb_matches_independent_oracle():
    from scipy.ndimage import map_coordinates

    y, u, v = _planes(2, 3)
    kr, kb = 0.2126, 0.0722
    kg = 1 - kr - kb
    # forward RGB -> (Y, Pb, Pr) matrix of BT.709, inverted numerically
    fwd = np.array([
        [kr, kg, kb],
        [-kr / (2 - 2 * kb), -kg / (2 - 2 * kb), 0.5],
        [0.5, -kg / (2 - 2 * kr), -kb / (2 - 2 * kr)],
    ])
    inv = np.linalg.inv(fwd)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    coords = np.stack([(rows - 0.5) / 2.0, cols / 2.0])  # chroma: half-way vertically, co-sited horizontally
    expected = []
    for i in range(y.shape[0]):
        cb = map_coordinates(u[i].astype(np.float64), coords, order=1, mode="nearest")
        cr = map_coordinates(v[i].astype(np.float64), coords, order=1, mode="nearest")
        ypp = np.stack([(y[i] - 16.0) / 219.0, (cb - 128.0) / 224.0, (cr - 128.0) / 224.0], -1)
        expected.append(np.clip(np.rint(ypp @ inv.T * 255.0), 0, 255))
    diff = np.abs(common.yuv420_to_rgb(y, u, v).astype(int) - np.stack(expected).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_read_yuv420_slices_frames(tmp_path):
    planes = _planes(5, 4)
    path = tmp_path / f"X_{W}x{H}_30fps_420_8bit_YUV.yuv"
    _write_yuv(path, planes)
    assert common.yuv420_num_frames(str(path), W, H) == 5
    y, u, v = common.read_yuv420(str(path), W, H, start=3, count=10)
    assert y.shape == (2, H, W) and u.shape == (2, H // 2, W // 2)
    np.testing.assert_array_equal(y, planes[0][3:])
    np.testing.assert_array_equal(v, planes[2][3:])


# ----------------------------------------------------------------------------- file names


def test_parse_official_file_names():
    s = parse_uvg_filename("/d/Beauty_1920x1080_120fps_420_8bit_YUV.yuv")
    assert (s.name, s.kind, s.width, s.height, s.fps) == ("Beauty", "yuv", 1920, 1080, 120.0)
    s = parse_uvg_filename("ReadySteadyGo_3840x2160_50fps_420_8bit_YUV.yuv")
    assert (s.name, s.width, s.height, s.fps) == ("ReadySteadyGo", 3840, 2160, 50.0)
    assert parse_uvg_filename("Jockey_1920x1080_120fps.mp4").name == "Jockey"
    assert parse_uvg_filename("my clip.mp4").name == "my clip"
    assert parse_uvg_filename("notes.txt") is None
    with pytest.warns(UserWarning, match="ignoring"):
        assert parse_uvg_filename("Beauty_1920x1080_120fps_420_10bit_YUV.yuv") is None
    s = parse_mcljcv_filename("videoSRC07_1920x1080_25.yuv")
    assert (s.name, s.kind, s.width, s.height, s.fps) == ("videoSRC07", "yuv", 1920, 1080, 25.0)
    assert parse_mcljcv_filename("videoSRC3.mp4").name == "videoSRC03"
    assert parse_mcljcv_filename("Beauty.mp4") is None
    s = parse_hevcb_filename("/d/BasketballDrive_1920x1080_50.yuv")
    assert (s.name, s.kind, s.width, s.height, s.fps) == ("BasketballDrive", "yuv", 1920, 1080, 50.0)
    assert parse_hevcb_filename("Kimono1_1920x1080_24.yuv").name == "Kimono1"
    assert parse_hevcb_filename("Cactus_1920x1080.mp4").name == "Cactus"
    with pytest.warns(UserWarning, match="ignoring"):
        assert parse_hevcb_filename("Cactus_1920x1080_50_10bit.yuv") is None


def test_discover_names_hd_and_4k_variants(tmp_path):
    _write_yuv(tmp_path / f"Beauty_{W}x{H}_120fps_420_8bit_YUV.yuv", _planes(1, 0))
    wide = tuple(np.concatenate([p, p], 2) for p in _planes(1, 0))
    _write_yuv(tmp_path / f"Beauty_{2 * W}x{H}_120fps_420_8bit_YUV.yuv", wide)
    names = [s.name for s in common.discover_clips(str(tmp_path), parse_uvg_filename, "uvg", "x")]
    assert names == ["Beauty", f"Beauty_{2 * W}x{H}"]


# ----------------------------------------------------------------------------- builders + loader


def test_uvg_load_clips_round_trip(uvg_dir, uvg_data):
    _, planes = uvg_dir
    _, clips = uvg_data
    assert [c[0] for c in clips] == ["Beauty", "Extra", "HoneyBee"]
    got = {name: (frames, fps) for name, frames, fps in clips}
    for name, fps in (("Beauty", 120.0), ("HoneyBee", 50.0)):
        frames, got_fps = got[name]
        assert frames.dtype == np.uint8 and frames.shape == (5, H, W, 3)
        np.testing.assert_array_equal(frames, common.yuv420_to_rgb(*planes[name]))  # PNG is lossless
        assert got_fps == fps
    mp4, mp4_fps = read_video(uvg_dir[0] / "Extra.mp4")
    np.testing.assert_array_equal(got["Extra"][0], mp4)
    assert got["Extra"][1] == pytest.approx(mp4_fps) == pytest.approx(25.0)
    assert "tensorflow" not in sys.modules


def test_uvg_as_data_source_records(uvg_data):
    data_dir, _ = uvg_data
    builder = Uvg(data_dir=str(data_dir), config="native")
    assert builder.is_prepared()
    assert any(f.endswith("-of-00001") and ".array_record" in f for f in os.listdir(builder.data_dir))
    ds = builder.as_data_source(split="test")
    assert len(ds) == 3  # 5, 4 and 5 frames of 64x48 fit one record each
    rec = ds[2]
    assert rec["clip"] == b"HoneyBee" and rec["source"] == f"HoneyBee_{W}x{H}_50fps_420_8bit_YUV.yuv".encode()
    assert (int(rec["frame_start"]), int(rec["height"]), int(rec["width"]), float(rec["fps"])) == (0, H, W, 50.0)
    assert rec["encoding"] == b"png" and len(rec["frames"]) == 5 and rec["frames"][0][:4] == b"\x89PNG"
    assert [e["num_frames"] for e in common.clip_index(builder)] == [5, 4, 5]


def _configs(root) -> list[str]:
    return sorted(c for c in os.listdir(root) if not c.startswith("."))


def test_resize_max_frames_config_reuse_and_clip_selection(uvg_dir, uvg_data):
    _, planes = uvg_dir
    data_dir, clips = uvg_data
    out = list(load_clips("uvg", str(data_dir), manual_dir=str(uvg_dir[0]), max_frames=3, resize=(32, 24),
                          clips=["HoneyBee", "Beauty"]))
    assert [o[0] for o in out] == ["HoneyBee", "Beauty"]
    expected = pixels.resize_frames(common.yuv420_to_rgb(*planes["HoneyBee"])[:3], (32, 24))
    assert out[0][1].shape == (3, 24, 32, 3)
    np.testing.assert_array_equal(out[0][1], expected)
    assert _configs(data_dir / "uvg") == ["32x24_3f", "native"]
    # fewer frames at the same size reuse 32x24_3f; native frames reuse the full native build
    again = list(load_clips("uvg", str(data_dir), max_frames=2, resize=(32, 24), clips=["HoneyBee"]))
    np.testing.assert_array_equal(again[0][1], expected[:2])
    short = list(load_clips("uvg", str(data_dir), max_frames=2))
    np.testing.assert_array_equal(short[0][1], clips[0][1][:2])
    assert _configs(data_dir / "uvg") == ["32x24_3f", "native"]


def test_chunked_raw_records_reassemble(tmp_path, uvg_dir, uvg_data):
    import tensorflow_datasets as tfds

    _, clips = uvg_data
    cfg = common.make_config(chunk_frames=2, frame_encoding="raw", name="chunk2_raw")
    builder = Uvg(data_dir=str(tmp_path), config=cfg)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(uvg_dir[0])))
    ds = builder.as_data_source(split="test")
    assert len(ds) == 3 + 2 + 3
    assert [int(ds[i]["frame_start"]) for i in range(3)] == [0, 2, 4]
    for (name, frames, fps), (ref_name, ref, ref_fps) in zip(common.iter_clips(builder), clips, strict=True):
        assert (name, fps) == (ref_name, ref_fps)
        np.testing.assert_array_equal(frames, ref)
    (name, frames, _), = common.iter_clips(builder, clips=["Beauty"], max_frames=3)
    np.testing.assert_array_equal(frames, clips[0][1][:3])


def test_mcljcv_build_and_load(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    p1, p2 = _planes(5, 5), _planes(5, 6)
    _write_yuv(manual / f"videoSRC01_{W}x{H}_30.yuv", p1)
    _write_yuv(manual / f"videoSRC02_{W}x{H}_25.yuv", p2)
    write_video(manual / "videoSRC03.mp4", _rgb_clip(3), 24)
    _write_yuv(manual / f"Beauty_{W}x{H}_120fps_420_8bit_YUV.yuv", p1)  # not MCL-JCV: ignored (warned)
    with pytest.warns(UserWarning, match="ignoring"):
        out = list(load_clips("mcljcv", str(tmp_path)))  # default manual dir: data_dir/manual
    assert [(n, f.shape, fps) for n, f, fps in out] == [
        ("videoSRC01", (5, H, W, 3), 30.0), ("videoSRC02", (5, H, W, 3), 25.0), ("videoSRC03", (3, H, W, 3), 24.0)]
    np.testing.assert_array_equal(out[1][1], common.yuv420_to_rgb(*p2))
    assert MclJcv(data_dir=str(tmp_path), config="native").is_prepared()
    assert set(DATASETS) == {"uvg", "mcljcv", "hevcb"}


def test_hevcb_build_and_both_protocol_lengths(tmp_path):
    """HEVC class B files prepared like the others; the first N frames of each sequence (the 96-frame
    protocol, here N = 4 of 6) and the whole sequences come from two configs of one build directory."""
    manual = tmp_path / "manual"
    manual.mkdir()
    p1, p2 = _planes(6, 7), _planes(6, 8)
    _write_yuv(manual / f"Cactus_{W}x{H}_50.yuv", p1)
    _write_yuv(manual / f"BQTerrace_{W}x{H}_60.yuv", p2)
    first = list(load_clips("hevcb", str(tmp_path), max_frames=4))
    assert [(n, f.shape, fps) for n, f, fps in first] == [("BQTerrace", (4, H, W, 3), 60.0),
                                                          ("Cactus", (4, H, W, 3), 50.0)]
    np.testing.assert_array_equal(first[1][1], common.yuv420_to_rgb(*(p[:4] for p in p1)))
    whole = dict((n, f) for n, f, _ in load_clips("hevcb", str(tmp_path)))
    np.testing.assert_array_equal(whole["BQTerrace"][:4], first[0][1])
    assert whole["BQTerrace"].shape[0] == 6
    assert HevcB(data_dir=str(tmp_path), config="native").is_prepared()


# ----------------------------------------------------------------------------- errors


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, common.DatasetError) and "\n" not in str(info.value)


def test_errors(tmp_path, uvg_data):
    data_dir, _ = uvg_data
    _one_line_error("does not exist", load_clips, "uvg", str(tmp_path / "d1"), manual_dir=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    _one_line_error("no matching files", load_clips, "mcljcv", str(tmp_path / "d2"), manual_dir=str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / f"Jockey_{W}x{H}_120fps_420_8bit_YUV.yuv").write_bytes(b"\x00" * (W * H * 3 // 2 * 2 + 7))
    _one_line_error("not a multiple", load_clips, "uvg", str(tmp_path / "d3"), manual_dir=str(tmp_path / "bad"))
    assert not (tmp_path / "d3" / "uvg" / "native" / "1.0.0").exists()
    _one_line_error("unknown dataset", load_clips, "kinetics", str(data_dir))
    _one_line_error("unknown clip", load_clips, "uvg", str(data_dir), clips=["Nope"])
    _one_line_error("resize", prepare, "uvg", str(data_dir), resize=(0, 10))
    _one_line_error("max_frames", prepare, "uvg", str(data_dir), max_frames=0)
