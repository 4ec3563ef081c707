"""GOPs side by side on a ``gop`` mesh axis (gvc_jax.parallel): the bytes and the video do not
depend on the number of devices, and a stream coded on N devices decodes on any other count."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gvc_jax import parallel
from gvc_jax.parallel import DeviceCountError, GopMesh, check_devices

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def four_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "parallel_worker.py")], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["t2v", "t2v_gop_atoms", "flf2v"])
def test_bytes_do_not_depend_on_the_device_count(four_devices, case):
    assert four_devices["devices"] == 4
    res = four_devices["cases"][case]
    assert 4 in res["encode_4"]["mesh_sizes"]  # the 4-device run really went through a 4-device shard_map
    assert res["encode_1"]["gops"] == 3
    for n in (2, 4):
        assert res[f"encode_{n}"]["stream"] == res["encode_1"]["stream"]
        assert res[f"encode_{n}"]["video"] == res["encode_1"]["video"]


@pytest.mark.parametrize("case", ["t2v", "t2v_gop_atoms", "flf2v"])
def test_streams_decode_across_device_counts_without_drift(four_devices, case):
    res = four_devices["cases"][case]
    for key in ("decode_4_on_1", "decode_1_on_4"):  # decoded with strict=True: drift would have raised
        assert not res[key]["drift"]
        assert res[key]["video"] == res["encode_1"]["video"]


def test_device_count_is_validated():
    have = jax.local_device_count()
    assert check_devices(None) == have
    assert check_devices(1) == 1
    for bad in (0, -1, have + 1, True, 1.5, "2"):
        with pytest.raises(DeviceCountError):
            check_devices(bad)


def test_one_device_mesh_runs_the_plain_programs():
    mesh = GopMesh(1)
    assert mesh.mesh is None and mesh.size == 1
    assert mesh.chunks([1, 2, 3]) == [[1], [2], [3]]
    calls = []
    run = mesh.map("test", lambda a, b: a + b, (False, True), plain=lambda a, b: calls.append(b) or a + b)
    out = run(np.float32(1), [np.float32(2), np.float32(3)])
    assert [float(o) for o in out] == [3.0, 4.0] and len(calls) == 2


def test_cli_refuses_too_many_devices_before_reading(tmp_path):
    from gvc_jax import encode

    out = tmp_path / "x.gvc"
    with pytest.raises(DeviceCountError, match="devices must be"):
        encode.main(["missing.mp4", "-o", str(out), "--devices", str(jax.local_device_count() + 1)])
    assert not out.exists()


def test_split_weights_give_the_same_velocity_and_a_quarter_of_the_bytes(four_devices):
    w = four_devices["weights"]
    assert w["split_leaves"] > 0
    assert w["velocity_max_abs_diff"] <= 1e-5 * max(1.0, w["velocity_max_abs"])  # fp32 tolerance
    # every matrix is split 4 ways; only vectors (norms, biases) stay whole on each device
    assert w["param_bytes_per_device"] < 0.3 * w["param_bytes_total"]


def test_encode_with_split_weights_decodes_with_the_same_layout(four_devices):
    w = four_devices["weights"]
    # the same split reproduces the encoder exactly ...
    assert not w["decode_same_layout_drift"] and w["decode_same_layout_equal"]
    # ... another layout computes the split matmuls in another order: fp32 rounding, reported as drift,
    # a pixel at most a level or two away
    if not w["encode_same_bytes_as_1_device"]:
        assert w["decode_on_1_device_drift"]
    assert w["video_max_abs_diff_vs_1_device"] <= 4


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _cpu_env(devices: int) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"}


def _start_two(argv, extra=lambda i: [], tool="gvc_jax.encode"):
    """``TOOL ARGV --distributed`` as 2 processes x 2 CPU devices on localhost."""
    from gvc_jax.io import quiet_fork

    port = _free_port()
    with quiet_fork():
        return [subprocess.Popen([sys.executable, "-m", tool, *argv, "--distributed", "--coordinator",
                                  f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), *extra(i)],
                                 env=_cpu_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]


def _finish(procs) -> None:
    errs = [p.communicate(timeout=600)[1].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]


@pytest.mark.parametrize("variant", ["flf2v"])  # T2V: the split-weights test; I2V: the batch test
def test_two_processes_write_the_one_process_stream(tmp_path, variant):
    from gvc_jax import cli
    from gvc_jax import encode as encode_cli
    from gvc_jax.io import read_video, sample_clip_path, write_video

    clip = str(tmp_path / "in.npy")
    write_video(clip, read_video(sample_clip_path("bikes"), resize=(48, 32), max_frames=27)[0], 16.0)
    model = "preset:tiny" if variant == "t2v" else "preset:tiny-anchored"
    args = ["--model", model, "-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames", "9",
            "--variant", variant, "--anchor-codec", "webp", "--quiet"]
    ref = str(tmp_path / "one.gvc")
    assert cli.run_main(encode_cli.main, [clip, "-o", ref, *args, "--decoded", str(tmp_path / "one.npy")]) == 0
    out = str(tmp_path / "two.gvc")
    _finish(_start_two([clip, "-o", out, *args, "--decoded", str(tmp_path / "two.npy"), "--eval"],
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


def test_a_batch_of_i2v_chains_runs_side_by_side_with_the_streams_of_each_video_alone(four_devices):
    res = four_devices["batch"]
    assert res["same_as_alone"] == [True, True, True]
    assert res["chunk_sizes"] == [3, 2, 1]  # wave k: GOP k of every chain that has one, in one chunk


def test_a_model_directory_loads_straight_onto_the_weight_shards(four_devices):
    w = four_devices["weights"]
    assert w["loaded_on_shards_equal"] and w["loaded_fingerprint_equal"]
    assert w["loaded_on_shards_per_device"] == w["param_bytes_per_device"] < w["param_bytes_total"] / 3


def test_bench_gop_abstract_splits_the_weights_per_device(four_devices):
    whole, split = four_devices["abstract"]["1"], four_devices["abstract"]["4"]
    w = four_devices["weights"]  # the arguments shrink by exactly what splitting the weights saves
    assert whole - split == w["param_bytes_total"] - w["param_bytes_per_device"] > 0


def test_two_processes_code_a_batch_of_i2v_chains_like_one_process(tmp_path):
    """Three I2V chains on 2 processes x 2 devices: a wave's third GOP runs on process 1, whose
    decoded last frame process 0 then needs for that chain's next GOP (shared between processes)."""
    from gvc_jax import cli
    from gvc_jax import encode as encode_cli
    from gvc_jax.io import read_video, sample_clip_path, write_video

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

    from gvc_jax.io import read_video, sample_clip_path, write_video
    from gvc_jax.models.checkpoint import save_model
    from gvc_jax.models.registry import init_preset

    m = init_preset("tiny")
    model = str(tmp_path / "model")
    save_model(model, m.config, nnx.state(m.dit, nnx.Param), nnx.state(m.vae, nnx.Param))
    clip = str(tmp_path / "in.npy")
    write_video(clip, read_video(sample_clip_path("bikes"), resize=(48, 32), max_frames=27)[0], 16.0)
    args = ["--model", model, "-K", "256", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames", "9",
            "--weight-shards", "2", "--quiet"]

    one = subprocess.run([sys.executable, "-m", "gvc_jax.encode", clip, "-o", str(tmp_path / "one.gvc"), *args],
                         env=_cpu_env(4), capture_output=True, text=True, timeout=600)
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
    from gvc_jax.io import read_video, sample_clip_path, write_video

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
