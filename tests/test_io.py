"""Tests for gvc_jax.io.* (round trips per format, streamed reading and writing, sample clips,
errors, atomic writes, output checks) and gvc_jax.pixels (resizing, padding, value ranges)."""
import gc
import os
import tracemalloc

import numpy as np
import pytest

from gvc_jax import pixels
from gvc_jax.io import atomic, ffmpeg, preview, sample_clips, video_reader, video_writer


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
    video_writer.write_video(path, clip, 16, crf=12)
    frames, fps = video_reader.read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(16.0)
    assert _psnr(clip, frames) > 35.0
    assert not np.array_equal(clip, frames)  # really went through a lossy codec


def test_mp4_odd_size_keeps_size(tmp_path, clip):
    odd = np.ascontiguousarray(clip[:4, :63, :95])
    video_writer.write_video(tmp_path / "odd.mp4", odd, 25.0)
    frames, fps = video_reader.read_video(tmp_path / "odd.mp4")
    assert frames.shape == odd.shape
    assert fps == pytest.approx(25.0)
    assert _psnr(odd, frames) > 35.0


def test_mp4_crf_controls_size(tmp_path, clip):
    video_writer.write_video(tmp_path / "hi.mp4", clip, 16, crf=12)
    video_writer.write_video(tmp_path / "lo.mp4", clip, 16, crf=40)
    assert os.path.getsize(tmp_path / "lo.mp4") < os.path.getsize(tmp_path / "hi.mp4")


def test_y4m_round_trip_within_yuv_rounding(tmp_path, clip):
    # y4m stores YUV 4:4:4; 8-bit RGB -> YUV -> RGB is not bijective, so it is exact up to 2 levels
    video_writer.write_video(tmp_path / "clip.y4m", clip, 24)
    frames, fps = video_reader.read_video(tmp_path / "clip.y4m")
    assert frames.shape == clip.shape and fps == pytest.approx(24.0)
    assert np.abs(frames.astype(int) - clip.astype(int)).max() <= 2


def test_npy_round_trip_exact(tmp_path, clip):
    video_writer.write_video(tmp_path / "clip.npy", clip, 16)
    frames, fps = video_reader.read_video(tmp_path / "clip.npy", start=2, max_frames=3)
    np.testing.assert_array_equal(frames, clip[2:5])
    assert fps == 16.0


def test_png_directory_round_trip_exact(tmp_path, clip):
    out = tmp_path / "frames"
    video_writer.write_video(out, clip, 16)
    assert sorted(os.listdir(out))[:2] == ["frame_00000.png", "frame_00001.png"]
    frames, fps = video_reader.read_video(out)
    np.testing.assert_array_equal(frames, clip)
    assert fps == 16.0
    assert sorted(os.listdir(tmp_path)) == ["frames"]  # no temporary leftovers


def test_single_png_image(tmp_path, clip):
    video_writer.write_video(tmp_path / "one.png", clip[:1], 16)
    frames, _ = video_reader.read_video(tmp_path / "one.png")
    np.testing.assert_array_equal(frames, clip[:1])
    with pytest.raises(pixels.VideoError):
        video_writer.write_video(tmp_path / "many.png", clip, 16)


def test_directory_natural_sort(tmp_path, clip):
    from PIL import Image

    d = tmp_path / "d"
    d.mkdir()
    for i in (10, 2, 1):  # lexical order would be 1, 10, 2
        Image.fromarray(clip[i % len(clip)]).save(d / f"f{i}.png")
    frames, _ = video_reader.read_video(d)
    np.testing.assert_array_equal(frames, clip[[1, 2, 10 % len(clip)]])


# ----------------------------------------------------------------------------- sample clip, resize


def test_read_sample_clip_with_resize_and_start():
    path = sample_clips.sample_clip_path("bigbuckbunny")
    frames, fps = video_reader.read_video(path, max_frames=5, resize=(64, 48))
    assert frames.shape == (5, 48, 64, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(25.0)
    assert frames.std() > 5  # real picture content
    full, _ = video_reader.read_video(path, max_frames=5)
    late, _ = video_reader.read_video(path, start=2, max_frames=3)
    assert full.shape == (5, 720, 1280, 3)
    np.testing.assert_array_equal(late, full[2:5])
    assert os.path.isfile(sample_clips.sample_clip_path("bikes"))
    with pytest.raises(pixels.VideoError):
        sample_clips.sample_clip_path("nope")


def test_resize_downscale_is_antialiased(tmp_path):
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, :, ::2] = 255  # 1-pixel stripes: naive subsampling gives pure black or white
    np.save(tmp_path / "s.npy", stripes)
    small, _ = video_reader.read_video(tmp_path / "s.npy", resize=(16, 16))
    assert small.shape == (1, 16, 16, 3)
    assert np.abs(small[:, 2:-2, 2:-2].astype(int) - 128).max() <= 3


# ----------------------------------------------------------------------------- errors


def test_read_errors(tmp_path):
    with pytest.raises(pixels.VideoError, match="no such file"):
        video_reader.read_video(tmp_path / "missing.mp4")
    fake = tmp_path / "fake.mp4"
    fake.write_text("this is not a video\n" * 20)
    with pytest.raises(pixels.VideoError, match="cannot read"):
        video_reader.read_video(fake)
    video_writer.write_video(tmp_path / "real.mp4", _smooth_clip(frames=4), 16)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "real.mp4").read_bytes()[:200])  # truncated: header only
    with pytest.raises(pixels.VideoError, match="cannot read"):
        video_reader.read_video(tmp_path / "cut.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(pixels.VideoError):
        video_reader.read_video(tmp_path / "empty.mp4")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(pixels.VideoError, match="no image frames"):
        video_reader.read_video(tmp_path / "emptydir")
    np.save(tmp_path / "v.npy", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(pixels.VideoError, match="no frames"):
        video_reader.read_video(tmp_path / "v.npy", start=5)
    np.save(tmp_path / "bad.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(pixels.VideoError):
        video_reader.read_video(tmp_path / "bad.npy")
    assert issubclass(pixels.VideoError, ValueError)


def test_write_errors(tmp_path, clip):
    with pytest.raises(pixels.VideoError, match="unsupported"):
        video_writer.write_video(tmp_path / "x.xyz", clip, 16)
    with pytest.raises(pixels.VideoError, match="uint8"):
        video_writer.write_video(tmp_path / "x.mp4", clip.astype(np.float32), 16)
    with pytest.raises(pixels.VideoError, match="shape"):
        video_writer.write_video(tmp_path / "x.mp4", clip[..., :2], 16)
    with pytest.raises(pixels.VideoError, match="fps"):
        video_writer.write_video(tmp_path / "x.mp4", clip, 0)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    atomic.atomic_write_bytes(path, b"abc")
    atomic.atomic_write_bytes(path, b"defg")
    assert path.read_bytes() == b"defg"
    assert os.listdir(path.parent) == ["out.bin"]


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            assert tmp.endswith(".mp4") and os.path.dirname(tmp) == str(tmp_path)
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("crash mid-way")
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"old")  # an existing file survives a failed overwrite
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
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

    monkeypatch.setattr(video_writer, "write_png", flaky_png)
    with pytest.raises(OSError):
        video_writer.write_video(tmp_path / "frames", clip, 16)
    assert len(calls) == 3 and os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- array helpers


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_pad_crop_round_trip(dtype):
    x = (np.random.default_rng(0).random((2, 17, 30, 3)) * 255).astype(dtype)
    p = pixels.pad_to_multiple(x, 16)
    assert p.shape == (2, 32, 32, 3) and p.dtype == x.dtype
    np.testing.assert_array_equal(pixels.crop(p, 17, 30), x)
    np.testing.assert_array_equal(p[:, 17:, :30], np.repeat(x[:, -1:], 15, axis=1))  # edge replication
    np.testing.assert_array_equal(p[:, :17, 30:], np.repeat(x[:, :, -1:], 2, axis=2))
    assert pixels.pad_to_multiple(p, 16) is p
    assert pixels.pad_to_multiple(x[0], 8).shape == (24, 32, 3)
    with pytest.raises(ValueError):
        pixels.crop(x, 18, 30)


def test_model_range_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = pixels.to_model_range(u)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(pixels.from_model_range(x), u)
    np.testing.assert_array_equal(pixels.from_model_range(np.array([-3.0, 3.0, 0.0])), [0, 255, 128])
    with pytest.raises(ValueError):
        pixels.to_model_range(x)


def test_save_side_by_side(tmp_path, clip):
    decoded = pixels.pad_to_multiple(255 - clip, 16)  # padded decode gets cropped
    preview.save_side_by_side(tmp_path / "cmp.png", clip, decoded)
    grid, _ = video_reader.read_video(tmp_path / "cmp.png")
    h, w = clip.shape[1:3]
    assert grid.shape == (1, 2 * h + 4, 4 * w + 3 * 4, 3)
    np.testing.assert_array_equal(grid[0, :h, :w], clip[0])
    np.testing.assert_array_equal(grid[0, h + 4 :, -w:], 255 - clip[-1])


def test_ffmpeg_exe_exists():
    assert os.access(ffmpeg.ffmpeg_exe(), os.X_OK)


def test_as_video_and_resize_frames():
    frame = np.zeros((24, 32, 3), np.uint8)
    assert pixels.as_video(frame).shape == (1, 24, 32, 3)
    assert pixels.as_video(frame.astype(np.float32), allow_float=True).dtype == np.float32
    with pytest.raises(pixels.VideoError, match="uint8"):
        pixels.as_video(frame.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 or float"):
        pixels.as_video(frame.astype(np.int32), "ref", allow_float=True)
    with pytest.raises(ValueError, match="empty"):
        pixels.as_video(np.zeros((0, 24, 32, 3), np.uint8))
    assert video_reader.VideoError is pixels.VideoError and video_writer.VideoError is pixels.VideoError
    video = frame[None].repeat(2, 0)
    assert pixels.resize_frames(video, (32, 24)) is video
    assert pixels.resize_frames(video, (16, 12)).shape == (2, 12, 16, 3)
    with pytest.raises(pixels.VideoError, match="positive"):
        pixels.resize_frames(video, (0, 12))


# ----------------------------------------------------------------------------- streamed reading

TINY = dict(frames=8, height=24, width=32)


def _ffmpeg_children() -> list:
    """ffmpeg processes that are children of this one (zombies included: they are not reaped)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - /proc fallback
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
        out = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/comm") as fh:
                    name = fh.read().strip()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and "ffmpeg" in name:
                out.append(pid)
        return out
    return [p.pid for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """The same 8-frame 32x24 clip as mp4, npy, a PNG directory, and one frame as a PNG image."""
    root = tmp_path_factory.mktemp("inputs")
    clip = _smooth_clip(**TINY)
    paths = {kind: str(root / name) for kind, name in
             (("mp4", "c.mp4"), ("npy", "c.npy"), ("dir", "frames"), ("image", "one.png"))}
    for kind, path in paths.items():
        video_writer.write_video(path, clip[:1] if kind == "image" else clip, 16)
    return paths


@pytest.mark.parametrize("kind", ["mp4", "npy", "dir", "image"])
@pytest.mark.parametrize("start, max_frames, resize", [(0, None, None), (2, 3, None), (1, None, (16, 12)),
                                                        (5, 10, (40, 30))])
def test_reader_matches_read_video(tiny_inputs, kind, start, max_frames, resize):
    path = tiny_inputs[kind]
    if kind == "image" and start:
        with pytest.raises(pixels.VideoError, match="no frames"):
            video_reader.open_video(path, start=start)
        return
    expected, fps = video_reader.read_video(path, start=start, max_frames=max_frames, resize=resize)
    with video_reader.open_video(path, start=start, max_frames=max_frames, resize=resize) as reader:
        assert reader.num_frames == expected.shape[0] >= 1
        assert (reader.height, reader.width) == expected.shape[1:3] and reader.fps == fps
        chunks = []
        while len(chunk := reader.read(3)):
            assert chunk.dtype == np.uint8 and 1 <= chunk.shape[0] <= 3
            chunks.append(chunk)
        assert reader.read(3).shape == (0, reader.height, reader.width, 3)  # stays at the end
    np.testing.assert_array_equal(np.concatenate(chunks), expected)
    with video_reader.VideoReader(path, start=start, max_frames=max_frames, resize=resize) as reader:
        np.testing.assert_array_equal(np.stack(list(reader)), expected)
    if kind != "mp4":  # lossless inputs: the frames themselves
        clip = _smooth_clip(**TINY)[: 1 if kind == "image" else None]
        stop = None if max_frames is None else start + max_frames
        want = clip[start:stop] if resize is None else pixels.resize_frames(clip[start:stop], resize)
        np.testing.assert_array_equal(expected, want)


def test_reader_npy_is_lazy(tmp_path):
    big = np.zeros((300, 120, 160, 3), np.uint8)  # 17 MB on disk
    big[:, 0, 0, 0] = np.arange(300) % 256
    np.save(tmp_path / "big.npy", big)
    del big
    tracemalloc.start()
    try:
        with video_reader.open_video(tmp_path / "big.npy", start=200) as reader:
            frames = reader.read(3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reader.num_frames == 100 and frames[:, 0, 0, 0].tolist() == [200, 201, 202]
    assert peak < 3 * frames.nbytes + (1 << 20)  # the 3 frames (and change), not the 17 MB


def test_reader_arguments_and_close(tiny_inputs):
    path = tiny_inputs["mp4"]
    for kwargs in ({"start": -1}, {"max_frames": 0}, {"resize": (0, 4)}, {"resize": "big"}):
        with pytest.raises(pixels.VideoError):
            video_reader.open_video(path, **kwargs)
    assert _ffmpeg_children() == []
    reader = video_reader.open_video(path)
    with pytest.raises(pixels.VideoError, match="n >= 1"):
        reader.read(0)
    assert reader.read(2).shape == (2, 24, 32, 3)
    assert len(_ffmpeg_children()) == 1  # the decoder, mid-stream
    reader.close()
    reader.close()  # idempotent
    assert _ffmpeg_children() == []
    reader = video_reader.open_video(path)
    reader.read(1)
    del reader  # garbage collection ends the decoder too
    gc.collect()
    assert _ffmpeg_children() == []
    with pytest.raises(RuntimeError):
        with video_reader.open_video(path) as reader:
            reader.read(1)
            raise RuntimeError("consumer failed")
    assert _ffmpeg_children() == []


def test_reader_count_disagreeing_with_decode(tiny_inputs, monkeypatch):
    monkeypatch.setattr(video_reader, "_count_frames", lambda path, limit: 12)  # more than the 8 there are
    with video_reader.open_video(tiny_inputs["mp4"]) as reader:
        assert reader.num_frames == 12
        assert reader.read(100).shape[0] == 8 and reader.num_frames == 8  # what was decoded
    monkeypatch.setattr(video_reader, "_count_frames", lambda path, limit: 5)  # fewer: never more than announced
    with video_reader.open_video(tiny_inputs["mp4"]) as reader:
        assert reader.read(100).shape[0] == 5 and reader.num_frames == 5
        assert reader.read(100).shape[0] == 0


# ----------------------------------------------------------------------------- streamed writing


def _write_in_pieces(path, clip, fps=16, **kw):
    with video_writer.VideoWriter(path, fps, **kw) as writer:
        writer.write(clip[:3])
        writer.write(clip[3])  # a single [H, W, 3] frame
        writer.write(clip[4:4])  # nothing
        writer.write(clip[4:])
    assert writer.num_frames == len(clip)


def test_writer_in_pieces_equals_one_go(tmp_path):
    clip = _smooth_clip(**TINY)
    for name in ("a.npy", "a_dir", "a.mp4", "a.y4m"):
        _write_in_pieces(tmp_path / "pieces" / name, clip)
        video_writer.write_video(tmp_path / "whole" / name, clip, 16)
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    assert (pieces / "a.npy").read_bytes() == (whole / "a.npy").read_bytes()
    np.save(tmp_path / "ref.npy", clip)
    assert (pieces / "a.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()  # a standard .npy
    assert sorted(os.listdir(pieces / "a_dir")) == sorted(os.listdir(whole / "a_dir"))
    for name in os.listdir(whole / "a_dir"):
        assert (pieces / "a_dir" / name).read_bytes() == (whole / "a_dir" / name).read_bytes()
    for name in ("a.mp4", "a.y4m"):
        np.testing.assert_array_equal(video_reader.read_video(pieces / name)[0],
                                      video_reader.read_video(whole / name)[0])
    assert sorted(os.listdir(pieces)) == sorted(os.listdir(whole)) == ["a.mp4", "a.npy", "a.y4m", "a_dir"]


@pytest.mark.parametrize("name", ["a.mp4", "a.npy", "frames", "a.y4m"])
def test_writer_abort_leaves_nothing(tmp_path, name):
    clip = _smooth_clip(**TINY)
    writer = video_writer.VideoWriter(tmp_path / name, 16)
    writer.write(clip[:3])
    assert os.listdir(tmp_path) or _ffmpeg_children()  # a temporary file, or ffmpeg about to write one
    writer.abort()
    writer.abort()  # idempotent
    assert os.listdir(tmp_path) == [] and _ffmpeg_children() == []
    with pytest.raises(RuntimeError):
        with video_writer.VideoWriter(tmp_path / name, 16) as writer:
            writer.write(clip[:3])
            raise RuntimeError("producer failed")
    assert os.listdir(tmp_path) == [] and _ffmpeg_children() == []
    writer = video_writer.VideoWriter(tmp_path / name, 16)
    writer.write(clip[:2])
    del writer  # garbage collected unfinished: aborted
    gc.collect()
    assert os.listdir(tmp_path) == [] and _ffmpeg_children() == []


def test_writer_errors_abort(tmp_path):
    clip = _smooth_clip(**TINY)
    writer = video_writer.VideoWriter(tmp_path / "a.mp4", 16)
    writer.write(clip[:2])
    with pytest.raises(pixels.VideoError, match="first ones were 32x24"):
        writer.write(clip[:2, :12])
    assert os.listdir(tmp_path) == [] and _ffmpeg_children() == []
    with pytest.raises(pixels.VideoError, match="already closed"):
        writer.write(clip[:2])
    with pytest.raises(pixels.VideoError, match="one frame"):
        with video_writer.VideoWriter(tmp_path / "one.png", 16) as writer:
            writer.write(clip[0])
            writer.write(clip[1])
    with pytest.raises(pixels.VideoError, match="no frames"):
        with video_writer.VideoWriter(tmp_path / "none.npy", 16):
            pass
    for kwargs in ({"fps": 0}, {"fps": float("nan")}, {"fps": 16, "crf": 60}):
        with pytest.raises(pixels.VideoError):
            video_writer.VideoWriter(tmp_path / "a.mp4", **kwargs)
    assert os.listdir(tmp_path) == []


def _snapshot(root) -> dict:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


def test_existing_directories_are_never_replaced(tmp_path):
    clip = _smooth_clip(**TINY)
    full = tmp_path / "full"
    (full / "sub").mkdir(parents=True)
    (full / "notes.txt").write_bytes(b"keep me")
    (full / "frame_00000.png").write_bytes(b"not really a png")
    (full / "sub" / "x.bin").write_bytes(b"\x00\x01")
    before, listing = _snapshot(full), sorted(os.listdir(tmp_path))
    with pytest.raises(pixels.VideoError, match="non-empty directory"):
        video_writer.write_video(full, clip, 16)
    with pytest.raises(pixels.VideoError, match="non-empty directory"):
        video_writer.VideoWriter(full, 16)
    with pytest.raises(pixels.VideoError, match="non-empty directory"):
        video_writer.check_output(full)
    out = tmp_path / "out.mp4"  # a directory where a file is to go
    out.mkdir()
    (out / "inside").write_bytes(b"x")
    with pytest.raises(pixels.VideoError, match="is a directory"):
        video_writer.write_video(out, clip, 16)
    with pytest.raises(pixels.VideoError, match="is a directory"):
        video_writer.check_output(out)
    with pytest.raises(IsADirectoryError):
        atomic.atomic_write_bytes(full, b"data")
    with pytest.raises(IsADirectoryError):
        with atomic.atomic_path(full):
            pass
    assert _snapshot(full) == before and sorted(os.listdir(full)) == ["frame_00000.png", "notes.txt", "sub"]
    assert (out / "inside").read_bytes() == b"x" and sorted(os.listdir(tmp_path)) == sorted(listing + ["out.mp4"])
    (tmp_path / "plain").write_bytes(b"a file")  # a file where a frame directory is to go
    with pytest.raises(pixels.VideoError, match="not a directory"):
        video_writer.write_video(tmp_path / "plain", clip, 16)
    assert (tmp_path / "plain").read_bytes() == b"a file"


def test_existing_empty_directory_gets_frames(tmp_path):
    clip = _smooth_clip(**TINY)
    empty = tmp_path / "empty"
    empty.mkdir()
    video_writer.check_output(empty)
    writer = video_writer.VideoWriter(empty, 16)
    writer.write(clip[:3])
    writer.abort()
    assert os.listdir(empty) == [] and sorted(os.listdir(tmp_path)) == ["empty"]  # left as it was
    _write_in_pieces(empty, clip)
    assert sorted(os.listdir(empty)) == [f"frame_{i:05d}.png" for i in range(8)]
    np.testing.assert_array_equal(video_reader.read_video(empty)[0], clip)
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_check_output(tmp_path):
    for name in ("a.mp4", "a.MKV", "a.y4m", "a.npy", "a.png", "frames"):
        video_writer.check_output(tmp_path / name)
    assert os.listdir(tmp_path) == []  # writes nothing
    with pytest.raises(pixels.VideoError, match="unsupported"):
        video_writer.check_output(tmp_path / "a.gif")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        video_writer.check_output(tmp_path / "missing" / "a.mp4")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(PermissionError, match="not writable"):
            video_writer.check_output(ro / "a.mp4")


def test_fps_fraction_and_arg():
    assert ffmpeg.fps_fraction(25) == (25, 1)
    assert ffmpeg.fps_fraction(29.97) == (2997, 100)
    assert ffmpeg.fps_fraction(30000 / 1001) == (30000, 1001)
    assert ffmpeg.fps_arg(24000 / 1001) == "24000/1001"
    for bad in (0, -5, float("nan"), float("inf"), None, "fast", 1e-6):
        with pytest.raises(pixels.VideoError, match="fps"):
            ffmpeg.fps_fraction(bad)


def test_stale_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from gvc_jax.io.atomic import atomic_write_bytes
    from gvc_jax.io.video_writer import write_video

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "a.gvc"
    stale = tmp_path / f".a.gvc.pid{dead.pid}.abc123.tmp.gvc"
    live = tmp_path / f".a.gvc.pid{os.getpid()}.zzz.tmp.gvc"  # a run still in progress
    other = tmp_path / ".b.gvc.pid1.x.tmp.gvc"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    atomic_write_bytes(out, b"data")
    assert out.read_bytes() == b"data" and not stale.exists() and live.exists() and other.exists()
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / f".frames.pid{dead.pid}.q.tmp").mkdir()  # a killed decode into an empty directory
    write_video(str(frames), np.zeros((2, 8, 8, 3), np.uint8), 16.0)
    assert sorted(os.listdir(frames)) == ["frame_00000.png", "frame_00001.png"]
