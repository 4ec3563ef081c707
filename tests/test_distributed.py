"""GOPs over several processes (``--distributed``, jax.distributed on localhost: 2 processes x 2
CPU devices): the streams, videos and resumed encodes equal those of one process.

On a loaded 2-core machine the two processes must reach each collective within gloo's fixed 30 s
of each other. They are started together and do the same work: the persistent compilation cache
is off for them (only process 0 may write it, and process 1's programs never hit it, so with it
process 0 would race ahead by a whole compilation and wait at the first collective), and they get
a generous, bounded time to join (``INIT_TIMEOUT_S``) and to finish (``FINISH_TIMEOUT_S``)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

INIT_TIMEOUT_S = 300  # --init-timeout: both processes start together, but imports crawl on a loaded machine
FINISH_TIMEOUT_S = 600


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cpu_env(devices: int, cache: bool = True) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"}
    if not cache:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env


def _start_two(argv, extra=lambda i: [], tool="gvc_jax.encode"):
    """``TOOL ARGV --distributed`` as 2 processes x 2 CPU devices on localhost."""
    from gvc_jax.io.ffmpeg import quiet_fork

    port = _free_port()
    with quiet_fork():
        return [subprocess.Popen([sys.executable, "-m", tool, *argv, "--distributed", "--coordinator",
                                  f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                                  "--init-timeout", str(INIT_TIMEOUT_S), *extra(i)],
                                 env=_cpu_env(2, cache=False), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for i in range(2)]


def _finish(procs) -> None:
    try:
        errs = [p.communicate(timeout=FINISH_TIMEOUT_S)[1].decode(errors="replace") for p in procs]
    finally:
        for p in procs:  # a timed-out (or failed) pair is not left running
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]


@pytest.mark.parametrize("variant", ["flf2v"])  # T2V: the split-weights test; I2V: the batch test
def test_two_processes_write_the_one_process_stream(tmp_path, variant):
    from gvc_jax import cli
    from gvc_jax import encode as encode_cli
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.io.video_writer import write_video

    clip = str(tmp_path / "in.npy")
    write_video(clip, read_video(sample_clip_path("bikes"), resize=(48, 32), max_frames=27)[0], 16.0)
    model = "preset:tiny" if variant == "t2v" else "preset:tiny-anchored"
    args = ["--model", model, "-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames", "9",
            "--variant", variant, "--anchor-codec", "webp", "--quiet"]
    ref = str(tmp_path / "one.gvc")
    assert cli.run_main(encode_cli.main, [clip, "-o", ref, *args, "--decoded", str(tmp_path / "one.npy")]) == 0
    out = str(tmp_path / "two.gvc")
    # --eval on process 0 over the gathered frames; PSNR alone (the learned metrics would load and
    # compile their networks in process 0 for a number this test does not look at)
    _finish(_start_two([clip, "-o", out, *args, "--decoded", str(tmp_path / "two.npy"), "--eval", "--metrics", "psnr"],
                       lambda i: ["--json", str(tmp_path / f"r{i}.json")]))
    with open(out, "rb") as f, open(ref, "rb") as g:
        assert f.read() == g.read()  # 3 GOPs over 2 processes x 2 devices: the same bytes
    one = np.load(tmp_path / "one.npy")
    assert np.array_equal(np.load(tmp_path / "two.npy"), one)  # every GOP's frames gathered on process 0
    report = json.loads((tmp_path / "r0.json").read_text())
    assert report["devices"] == 4 and report["psnr"] > 5
    assert not (tmp_path / "r1.json").exists()  # only process 0 writes
    # and decoded on both processes: process 0 writes the video of the one-process decoder, no drift
    _finish(_start_two([out, "-o", str(tmp_path / "dec.npy"), "--model", model, "--strict", "--quiet",
                        "--json", str(tmp_path / "d.json")], tool="gvc_jax.decode"))
    assert np.array_equal(np.load(tmp_path / "dec.npy"), one)
    decoded = json.loads((tmp_path / "d.json").read_text())
    assert decoded["devices"] == 4 and decoded["drifted_gops"] == []


def test_two_processes_code_a_batch_of_i2v_chains_like_one_process(tmp_path):
    """Three I2V chains on 2 processes x 2 devices: a wave's third GOP runs on process 1, whose
    decoded last frame process 0 then needs for that chain's next GOP (shared between processes)."""
    from gvc_jax import cli
    from gvc_jax import encode as encode_cli
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.io.video_writer import write_video

    src = tmp_path / "videos"
    src.mkdir()
    frames = read_video(sample_clip_path("bikes"), resize=(48, 32), max_frames=30)[0]
    for i, n in enumerate((17, 9, 25)):
        write_video(str(src / f"v{i}.npy"), frames[i:i + n], 16.0)
    args = ["--batch", "--model", "preset:tiny-anchored", "-K", "256", "-M", "3", "--steps", "4", "--tail", "1",
            "--gop-frames", "9", "--variant", "i2v", "--anchor-codec", "webp", "--quiet"]
    assert cli.run_main(encode_cli.main, [str(src), "-o", str(tmp_path / "one"), *args]) == 0
    _finish(_start_two([str(src), "-o", str(tmp_path / "two"), *args]))
    for name in ("v0.gvc", "v1.gvc", "v2.gvc"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_two_processes_read_a_model_directory_onto_split_weights(tmp_path):
    """--weight-shards 2 on 2 processes x 2 devices: each process reads only its devices' parts of
    the DiT (orbax into a global NamedSharding), and the stream equals one process on 4 devices."""
    from flax import nnx

    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.io.video_writer import write_video
    from gvc_jax.models.registry import init_preset
    from weights_convert.model_writer import save_model

    m = init_preset("tiny")
    model = str(tmp_path / "model")
    save_model(model, m.config, nnx.state(m.dit, nnx.Param), nnx.state(m.vae, nnx.Param))
    clip = str(tmp_path / "in.npy")
    write_video(clip, read_video(sample_clip_path("bikes"), resize=(48, 32), max_frames=27)[0], 16.0)
    args = ["--model", model, "-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames", "9",
            "--weight-shards", "2", "--quiet"]

    one = subprocess.run([sys.executable, "-m", "gvc_jax.encode", clip, "-o", str(tmp_path / "one.gvc"), *args],
                         env=_cpu_env(4), capture_output=True, text=True, timeout=FINISH_TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-2000:]
    _finish(_start_two([clip, "-o", str(tmp_path / "two.gvc"), *args]))
    assert (tmp_path / "two.gvc").read_bytes() == (tmp_path / "one.gvc").read_bytes()


def test_two_processes_resume_a_killed_encode_to_the_same_bytes(tmp_path):
    """--distributed --resume: both processes are SIGKILLed once GOP 0 of an I2V chain is journaled;
    restarted, they skip it (every process reads every journal) and write the uninterrupted bytes."""
    import signal
    import time

    from gvc_jax import cli
    from gvc_jax import encode as encode_cli
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.io.video_writer import write_video

    clip = str(tmp_path / "in.npy")
    write_video(clip, read_video(sample_clip_path("bikes"), resize=(48, 32), max_frames=27)[0], 16.0)
    args = ["--model", "preset:tiny-anchored", "-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames",
            "9", "--variant", "i2v", "--anchor-codec", "webp", "--quiet"]
    ref = str(tmp_path / "one.gvc")
    assert cli.run_main(encode_cli.main, [clip, "-o", ref, *args]) == 0
    out = str(tmp_path / "two.gvc")
    def start():
        return _start_two([clip, "-o", out, *args, "--resume"], lambda i: ["--json", str(tmp_path / f"r{i}.json")])

    procs = start()
    journal, deadline = out + ".resume", time.time() + 300
    while time.time() < deadline and not (os.path.exists(journal) and os.path.getsize(journal) > 41):
        time.sleep(0.02)  # 41 bytes: the journal's header; more: GOP 0 is in
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert os.path.getsize(journal) > 41 and not os.path.exists(out)
    _finish(start())
    with open(out, "rb") as f, open(ref, "rb") as g:
        assert f.read() == g.read()
    assert 0 in json.loads((tmp_path / "r0.json").read_text())["resumed_gops"]
    assert not any(n.startswith("two.gvc.resume") for n in os.listdir(tmp_path))  # every journal removed
