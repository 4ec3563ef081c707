"""GOPs over several processes (``--distributed``, jax.distributed on localhost: 2 processes x 2
CPU devices) from the command line, from a model directory read onto split weights: the stream and
the video equal those of one process, process 0 alone writes, and two processes decode it (the
decoder's command line run in the encoder's two processes, after it: ``ENCODE_THEN_DECODE``). (The
same bytes as 1 device, cross-decoding, batches and resumed encodes of every variant on 2 processes:
the topology matrix, test_topology.py.)

On a loaded 2-core machine the two processes must reach each collective within gloo's fixed 30 s
of each other. They are started together and do the same work: the persistent compilation cache
is off for them (only process 0 may write it, and process 1's programs never hit it, so with it
process 0 would race ahead by a whole compilation and wait at the first collective), and they get
a generous, bounded time to join (``INIT_TIMEOUT_S``) and to finish (``FINISH_TIMEOUT_S``: a hang
guard, not a timing)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
from conftest import FAST_ANCHORED, bikes

from gvc_jax.io.video_writer import write_video

INIT_TIMEOUT_S = 300  # --init-timeout: both processes start together, but imports crawl on a loaded machine
FINISH_TIMEOUT_S = 1800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, cache: bool = True) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"}
    if not cache:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env


# The command lines of ``python -m gvc_jax.encode`` then of ``python -m gvc_jax.decode`` (each tool's
# ``main``, as its ``__main__`` runs it) in one process: the decoder runs the programs the encoder
# compiled (its reconstruction is the decoder's), so the second command compiles nothing. Both
# commands join the processes with their own --distributed flags; jax.distributed joins once a
# process, so the second command's join is the first's.
ENCODE_THEN_DECODE = r"""
import sys

from jax.experimental import multihost_utils

from gvc_jax import cli, decode, encode

then = sys.argv.index("--then-decode")
code = cli.run_main(encode.main, sys.argv[1:then])
if code == 0:
    multihost_utils.sync_global_devices("encoded")  # process 0 has written the stream
    cli.init_distributed = lambda *args, **kwargs: None  # joined by the encoder's command line
    code = cli.run_main(decode.main, sys.argv[then + 1:])
sys.exit(code)
"""


def _start_two(encode_argv, decode_argv, extra=lambda i: []):
    """``gvc_jax.encode ENCODE_ARGV --distributed`` then ``gvc_jax.decode DECODE_ARGV --distributed`` as
    2 processes x 2 CPU devices on localhost (``ENCODE_THEN_DECODE``); ``extra(i)``: process i's encode flags."""
    from gvc_jax.io.ffmpeg import quiet_fork

    port = free_port()

    def flags(i):
        return ["--distributed", "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i),
                "--init-timeout", str(INIT_TIMEOUT_S)]
    with quiet_fork():
        return [subprocess.Popen([sys.executable, "-c", ENCODE_THEN_DECODE, *encode_argv, *flags(i), *extra(i),
                                  "--then-decode", *decode_argv, *flags(i)],
                                 env=cpu_env(2, cache=False), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for i in range(2)]


def finish(procs) -> str:
    """Waits for every process (killed if one has not ended within ``FINISH_TIMEOUT_S``): each must
    exit 0. -> process 0's last line on stdout (when it is piped)."""
    try:
        outs = [p.communicate(timeout=FINISH_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:  # a timed-out (or failed) group is not left running
            if p.poll() is None:
                p.kill()
                p.wait()
    errs = "".join(e.decode(errors="replace")[-2000:] for _, e in outs)
    assert [p.returncode for p in procs] == [0] * len(procs), errs
    lines = (outs[0][0] or b"").decode().strip().splitlines()
    return lines[-1] if lines else ""


def _clip(tmp_path) -> str:
    clip = str(tmp_path / "in.npy")
    write_video(clip, bikes(48, 32, 27), 16.0)
    return clip


def test_two_processes_write_the_one_process_stream_from_split_weights(tmp_path, tiny_anchored):
    """FLF2V from a model directory with --weight-shards 2 on 2 processes x 2 devices: each process
    reads only its devices' parts of the DiT (orbax into a global NamedSharding); the stream and the
    video equal those of one process on 2 devices (the same host device count: XLA's CPU code depends
    on it, and FLF2V's bytes with it), one GOP at a time on the same 2 shards; process 0 alone writes
    (the stream, the frames of every GOP gathered, the report of --eval over them), and the stream
    decoded on both processes (the same layout) is that video, strictly. (Two processes against one
    device, every variant, through the API: the topology matrix.)"""
    from flax import nnx

    from weights_convert.model_writer import save_model

    model = str(tmp_path / "model")
    save_model(model, tiny_anchored.config, nnx.state(tiny_anchored.dit, nnx.Param),
               nnx.state(tiny_anchored.vae, nnx.Param))
    clip = _clip(tmp_path)
    args = ["--model", model, *FAST_ANCHORED, "--variant", "flf2v", "--anchor-codec", "webp", "--weight-shards", "2",
            "--quiet"]

    one = subprocess.run([sys.executable, "-m", "gvc_jax.encode", clip, "-o", str(tmp_path / "one.gvc"), *args,
                          "--decoded", str(tmp_path / "one.npy")],
                         env=cpu_env(2), capture_output=True, text=True, timeout=FINISH_TIMEOUT_S)
    assert one.returncode == 0, one.stderr[-2000:]
    out = str(tmp_path / "two.gvc")
    # --eval on process 0 over the gathered frames; PSNR alone (the learned metrics would load and
    # compile their networks in process 0 for a number this test does not look at); then the stream
    # decoded on both processes
    finish(_start_two([clip, "-o", out, *args, "--decoded", str(tmp_path / "two.npy"), "--eval", "--metrics", "psnr"],
                      [out, "-o", str(tmp_path / "dec.npy"), "--model", model, "--weight-shards", "2", "--strict",
                       "--quiet", "--json", str(tmp_path / "d.json")],
                      lambda i: ["--json", str(tmp_path / f"r{i}.json")]))
    assert (tmp_path / "two.gvc").read_bytes() == (tmp_path / "one.gvc").read_bytes()  # 3 GOPs: the same bytes
    one_video = np.load(tmp_path / "one.npy")
    assert np.array_equal(np.load(tmp_path / "two.npy"), one_video)  # every GOP's frames gathered on process 0
    report = json.loads((tmp_path / "r0.json").read_text())
    assert report["devices"] == 4 and report["weight_shards"] == 2 and report["psnr"] > 5
    assert not (tmp_path / "r1.json").exists()  # only process 0 writes
    # and decoded on both processes: process 0 writes the video of the one-process encoder, no drift
    assert np.array_equal(np.load(tmp_path / "dec.npy"), one_video)
    decoded = json.loads((tmp_path / "d.json").read_text())
    assert decoded["devices"] == 4 and decoded["weight_shards"] == 2 and decoded["drifted_gops"] == []
