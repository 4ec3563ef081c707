"""An interrupted encode or decode (Ctrl-C = SIGINT, kill = SIGTERM) exits 130 / 143 and leaves
no output and no temporary file behind."""
import os
import signal
import subprocess
import sys

import pytest
from conftest import slow_t2v, step_progress_env, wait_for_stderr

from gvc_jax.io.ffmpeg import quiet_fork

SLOW = slow_t2v(400)


@pytest.fixture(scope="module")
def clip(video_file):
    return video_file("noise", 0, 20, 16.0)


def _start(args, cwd):
    env = step_progress_env()  # waited for: "step N" on the progress bar
    with quiet_fork():
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("sig,code,when", [
    (signal.SIGINT, 130, b"step 3"),       # in the middle of a GOP's trajectory
    (signal.SIGTERM, 143, b"step 3"),
    (signal.SIGINT, 130, b"encode GOPs"),  # before the first GOP, while the programs compile
])
def test_interrupted_encode_leaves_nothing(clip, tmp_path, sig, code, when):
    out = tmp_path / "out"
    out.mkdir()
    proc = _start(["-m", "gvc_jax.encode", clip, "-o", "a.gvc", "--decoded", "rec.mp4", "--json", "r.json", *SLOW],
                  out)
    wait_for_stderr(proc, when)
    proc.send_signal(sig)
    rc = proc.wait(timeout=180)  # a hang guard
    err = proc.stderr.read().decode(errors="replace")
    assert rc == code, err[-2000:]
    assert "Traceback" not in err and "egmentation" not in err
    assert os.listdir(out) == []  # no stream, no decoded video, no JSON, no temporary


def test_interrupted_decode_leaves_nothing(clip, tmp_path):
    from gvc_jax import cli
    from gvc_jax import encode as encode_cli

    gvc = str(tmp_path / "a.gvc")
    fast = [a if a != "400" else "40" for a in SLOW]
    assert cli.run_main(encode_cli.main, [clip, "-o", gvc, *fast, "--quiet"]) == 0
    out = tmp_path / "dec"
    out.mkdir()
    proc = _start(["-m", "gvc_jax.decode", gvc, "-o", "frames", "--model", "preset:tiny"], out)
    wait_for_stderr(proc, b"GOP 1 step")  # the first GOP's frames are already in the (temporary) output
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 143
    assert os.listdir(out) == []
