"""Tests for gvc_jax.io: round trips per format, sample clips, resizing, errors, atomic writes."""
import os

import numpy as np
import pytest

from gvc_jax import io


def _smooth_clip(frames=8, height=64, width=96) -> np.ndarray:
    """A smooth, moving, colourful synthetic clip, uint8 [F, H, W, 3]."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    r = 128 + 100 * np.sin(2 * np.pi * (x / width + t / 16))
    g = 128 + 100 * np.cos(2 * np.pi * (y / height - t / 20))
    b = 128 + 60 * np.sin(2 * np.pi * (x + y) / (height + width))
    return np.stack(np.broadcast_arrays(r, g, b), -1).clip(0, 255).astype(np.uint8)


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def clip():
    return _smooth_clip()


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_x264_round_trip_is_near_lossless(tmp_path, clip, suffix):
    path = tmp_path / f"clip{suffix}"
    io.write_video(path, clip, 16, crf=12)
    frames, fps = io.read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(16.0)
    assert _psnr(clip, frames) > 35.0
    assert not np.array_equal(clip, frames)  # really went through a lossy codec


def test_mp4_odd_size_keeps_size(tmp_path, clip):
    odd = np.ascontiguousarray(clip[:4, :63, :95])
    io.write_video(tmp_path / "odd.mp4", odd, 25.0)
    frames, fps = io.read_video(tmp_path / "odd.mp4")
    assert frames.shape == odd.shape
    assert fps == pytest.approx(25.0)
    assert _psnr(odd, frames) > 35.0


def test_mp4_crf_controls_size(tmp_path, clip):
    io.write_video(tmp_path / "hi.mp4", clip, 16, crf=12)
    io.write_video(tmp_path / "lo.mp4", clip, 16, crf=40)
    assert os.path.getsize(tmp_path / "lo.mp4") < os.path.getsize(tmp_path / "hi.mp4")


def test_y4m_round_trip_within_yuv_rounding(tmp_path, clip):
    # y4m stores YUV 4:4:4; 8-bit RGB -> YUV -> RGB is not bijective, so it is exact up to 2 levels
    io.write_video(tmp_path / "clip.y4m", clip, 24)
    frames, fps = io.read_video(tmp_path / "clip.y4m")
    assert frames.shape == clip.shape and fps == pytest.approx(24.0)
    assert np.abs(frames.astype(int) - clip.astype(int)).max() <= 2


def test_npy_round_trip_exact(tmp_path, clip):
    io.write_video(tmp_path / "clip.npy", clip, 16)
    frames, fps = io.read_video(tmp_path / "clip.npy", start=2, max_frames=3)
    np.testing.assert_array_equal(frames, clip[2:5])
    assert fps == 16.0


def test_png_directory_round_trip_exact_and_replace(tmp_path, clip):
    out = tmp_path / "frames"
    io.write_video(out, clip, 16)
    assert sorted(os.listdir(out))[:2] == ["frame_00000.png", "frame_00001.png"]
    frames, fps = io.read_video(out)
    np.testing.assert_array_equal(frames, clip)
    assert fps == 16.0
    io.write_video(out, clip[:3], 16)  # replacing an existing directory drops the old frames
    assert io.read_video(out)[0].shape[0] == 3
    assert sorted(os.listdir(tmp_path)) == ["frames"]  # no temporary leftovers


def test_single_png_image(tmp_path, clip):
    io.write_video(tmp_path / "one.png", clip[:1], 16)
    frames, _ = io.read_video(tmp_path / "one.png")
    np.testing.assert_array_equal(frames, clip[:1])
    with pytest.raises(io.VideoError):
        io.write_video(tmp_path / "many.png", clip, 16)


def test_directory_natural_sort(tmp_path, clip):
    from PIL import Image

    d = tmp_path / "d"
    d.mkdir()
    for i in (10, 2, 1):  # lexical order would be 1, 10, 2
        Image.fromarray(clip[i % len(clip)]).save(d / f"f{i}.png")
    frames, _ = io.read_video(d)
    np.testing.assert_array_equal(frames, clip[[1, 2, 10 % len(clip)]])


# ----------------------------------------------------------------------------- sample clip, resize


def test_read_sample_clip_with_resize_and_start():
    path = io.sample_clip_path("bigbuckbunny")
    frames, fps = io.read_video(path, max_frames=5, resize=(64, 48))
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(25.0)
    assert frames.std() > 5  # real picture content
    full, _ = io.read_video(path, max_frames=5)
    late, _ = io.read_video(path, start=2, max_frames=3)
    assert full.shape == (5, 720, 1280, 3)
    np.testing.assert_array_equal(late, full[2:5])
    assert os.path.isfile(io.sample_clip_path("bikes"))
    with pytest.raises(io.VideoError):
        io.sample_clip_path("nope")


def test_resize_downscale_is_antialiased(tmp_path):
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, :, ::2] = 255  # 1-pixel stripes: naive subsampling gives pure black or white
    np.save(tmp_path / "s.npy", stripes)
    small, _ = io.read_video(tmp_path / "s.npy", resize=(16, 16))
    assert small.shape == (1, 16, 16, 3)
    assert np.abs(small[:, 2:-2, 2:-2].astype(int) - 128).max() <= 3


# ----------------------------------------------------------------------------- errors


def test_read_errors(tmp_path):
    with pytest.raises(io.VideoError, match="no such file"):
        io.read_video(tmp_path / "missing.mp4")
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(io.VideoError, match="cannot read"):
        io.read_video(fake)
    io.write_video(tmp_path / "real.mp4", _smooth_clip(frames=4), 16)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "real.mp4").read_bytes()[:200])  # truncated: header only
    with pytest.raises(io.VideoError, match="cannot read"):
        io.read_video(tmp_path / "cut.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(io.VideoError):
        io.read_video(tmp_path / "empty.mp4")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(io.VideoError, match="no image frames"):
        io.read_video(tmp_path / "emptydir")
    np.save(tmp_path / "v.npy", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(io.VideoError, match="no frames"):
        io.read_video(tmp_path / "v.npy", start=5)
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(io.VideoError):
        io.read_video(tmp_path / "bad.npy")
    assert issubclass(io.VideoError, ValueError)


def test_write_errors(tmp_path, clip):
    with pytest.raises(io.VideoError, match="unsupported"):
        io.write_video(tmp_path / "x.xyz", clip, 16)
    with pytest.raises(io.VideoError, match="uint8"):
        io.write_video(tmp_path / "x.mp4", clip.astype(np.float32), 16)
    with pytest.raises(io.VideoError, match="shape"):
        io.write_video(tmp_path / "x.mp4", clip[..., :2], 16)
    with pytest.raises(io.VideoError, match="fps"):
        io.write_video(tmp_path / "x.mp4", clip, 0)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    io.atomic_write_bytes(path, b"abc")
    io.atomic_write_bytes(path, b"defg")
    assert path.read_bytes() == b"defg"
    assert os.listdir(path.parent) == ["out.bin"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            assert tmp.endswith(".mp4") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("crash mid-way")
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"old")  # an existing file survives a failed overwrite
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            open(tmp, "wb").close()
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.mp4"]


def test_write_video_failure_mid_way_leaves_nothing(tmp_path, clip, monkeypatch):
    calls = []

    def flaky_png(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        np.save(path + ".npy", image)

    monkeypatch.setattr(io, "_write_png", flaky_png)
    with pytest.raises(OSError):
        io.write_video(tmp_path / "frames", clip, 16)
    assert len(calls) == 3 and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- array helpers


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_pad_crop_round_trip(dtype):
    x = (np.random.default_rng(0).random((2, 17, 30, 3)) * 255).astype(dtype)
    p = io.pad_to_multiple(x, 16)
    assert p.shape == (2, 32, 32, 3) and p.dtype == x.dtype
    np.testing.assert_array_equal(io.crop(p, 17, 30), x)
    np.testing.assert_array_equal(p[:, 17:, :30], np.repeat(x[:, -1:], 15, axis=1))  # edge replication
    np.testing.assert_array_equal(p[:, :17, 30:], np.repeat(x[:, :, -1:], 2, axis=2))
    assert io.pad_to_multiple(p, 16) is p
    assert io.pad_to_multiple(x[0], 8).shape == (24, 32, 3)
    with pytest.raises(ValueError):
        io.crop(x, 18, 30)


def test_model_range_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = io.to_model_range(u)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(io.from_model_range(x), u)
    np.testing.assert_array_equal(io.from_model_range(np.array([-3.0, 3.0, 0.0])), [0, 255, 128])
    with pytest.raises(ValueError):
        io.to_model_range(x)


def test_save_side_by_side(tmp_path, clip):
    decoded = io.pad_to_multiple(255 - clip, 16)  # padded decode gets cropped
    io.save_side_by_side(tmp_path / "cmp.png", clip, decoded)
    grid, _ = io.read_video(tmp_path / "cmp.png")
    h, w = clip.shape[1:3]
    assert grid.shape == (1, 2 * h + 4, 4 * w + 3 * 4, 3)
    np.testing.assert_array_equal(grid[0, :h, :w], clip[0])
    np.testing.assert_array_equal(grid[0, h + 4 :, -w:], 255 - clip[-1])


def test_ffmpeg_exe_exists():
    assert os.access(io.ffmpeg_exe(), os.X_OK)
