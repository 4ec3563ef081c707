"""The topology matrix: every variant (T2V, FLF2V, I2V) on every topology (1 device; 4 CPU devices
in one process; 2 processes x 2 CPU devices over jax.distributed) has the same four properties:

- same bytes: the stream and the decoded video equal the 1-device ones (1 device: coded twice);
  the 1-device references of the 4-device run are made in its own process: XLA's CPU code depends
  on the host device count, so a process with 4 host devices codes other bytes even on 1 of them;
- cross-decode: the 1-device stream decodes here, and this stream on 1 device, strictly (no drift);
- batch = alone: a batch of three chains gives each video the stream it gets alone (on 1 device);
- resume: an encode stopped before its second chunk of GOPs and resumed writes the same bytes.

One setup per topology (tests/parallel_worker.py codes every variant once): in this process for
1 device, in a subprocess for 4 devices, in two processes for jax.distributed. The 4-device run
also checks the split weights, per-GOP atoms and multi-resolution stages (the ``extras``), so that
one 4-device process compiles the programs they share. The subprocesses get generous,
bounded time: a hang fails the test, slowness on a loaded machine does not."""
import json
import os
import subprocess
import sys

import pytest
from conftest import matrix_video, model_for
from parallel_worker import VARIANTS, code_matrix, digest
from test_distributed import INIT_TIMEOUT_S, cpu_env, finish, free_port

from gvc_jax.codec.session import decode_video

HERE = os.path.dirname(os.path.abspath(__file__))
TOPOLOGIES = ("1-device", "4-devices", "2-processes")
CELLS = [(t, v) for t in TOPOLOGIES for v in VARIANTS]


def _run(topology: str, ref_dir: str, out: str) -> dict:
    from gvc_jax.io.ffmpeg import quiet_fork

    worker = [sys.executable, os.path.join(HERE, "parallel_worker.py"), out, "--refs", ref_dir]
    with quiet_fork():
        if topology == "4-devices":
            procs = [subprocess.Popen([*worker, "--extras"], env=cpu_env(4), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)]
        else:  # the compilation cache off: see test_distributed
            port = free_port()
            procs = [subprocess.Popen([*worker, "--distributed", f"localhost:{port}", str(i), "--init-timeout",
                                       str(INIT_TIMEOUT_S)], env=cpu_env(2, cache=False), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for i in range(2)]
    return json.loads(finish(procs))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """``matrix(topology)`` -> (the worker's results, the directory of its streams), each topology run once."""
    ref_dir = str(tmp_path_factory.mktemp("one"))
    runs = {"1-device": (code_matrix({v: model_for(v) for v in VARIANTS}, matrix_video(), ref_dir), ref_dir)}

    def get(topology: str):
        if topology not in runs:  # a failed run fails every cell of its topology, and is not run again
            out = str(tmp_path_factory.mktemp(topology))
            try:
                runs[topology] = (_run(topology, ref_dir, out), os.path.join(out, "p0"))
            except BaseException as e:  # noqa: BLE001  (re-raised, here and in the topology's other cells)
                runs[topology] = e
        if isinstance(runs[topology], BaseException):
            raise runs[topology]
        return runs[topology]
    return get


def _results(matrix, topology: str):
    """-> (the 1-device references for ``topology``, its results, the directory of its streams)."""
    res, where = matrix(topology)
    assert (res["devices"], res["processes"]) == {"1-device": (1, 1), "4-devices": (4, 1),
                                                  "2-processes": (4, 2)}[topology]
    return res.get("reference") or matrix("1-device")[0], res, where


@pytest.mark.parametrize("topology,variant", CELLS)
def test_same_bytes(matrix, topology, variant):
    ref, res, _ = _results(matrix, topology)
    one, here = ref[variant], res[variant]
    if topology == "1-device":
        here = here["again"]
    assert one["gops"] == 3
    assert here["stream"] == one["stream"] and here["video"] == one["video"]


@pytest.mark.parametrize("topology,variant", CELLS)
def test_cross_decode(matrix, topology, variant):
    ref, res, where = _results(matrix, topology)
    # the 1-device stream decoded on this topology (strict: drift would have raised) ...
    assert res[variant]["decoded_ref"] == {"video": ref[variant]["video"], "drift": False}
    # ... and this topology's stream decoded on 1 device (of the 4-device process; of this one)
    if topology == "4-devices":
        assert res[variant]["decoded_on_1"] == {"video": ref[variant]["video"], "drift": False}
    elif topology == "2-processes":
        with open(os.path.join(where, f"{variant}.gvc"), "rb") as f:
            dec = decode_video(f.read(), model_for(variant), strict=True, devices=1)
        assert digest(dec.video.tobytes()) == ref[variant]["video"]


@pytest.mark.parametrize("topology,variant", CELLS)
def test_batch_equals_alone(matrix, topology, variant):
    ref, res, _ = _results(matrix, topology)
    assert res[variant]["batch"] == ref[variant]["alone"]  # chains of 2, 1 and 3 GOPs
    chunks = res[variant]["batch_chunks"]
    if topology == "1-device":
        assert chunks == [1] * 6
    elif topology == "4-devices" and variant == "i2v":
        assert chunks == [3, 2, 1]  # wave k: GOP k of every chain that has one, in one chunk
    else:
        assert sum(chunks) == 6 and max(chunks) <= 4


@pytest.mark.parametrize("topology,variant", CELLS)
def test_resume(matrix, topology, variant):
    ref, res, _ = _results(matrix, topology)
    resumed = res[variant]["resume"]
    assert resumed["stream"] == ref[variant]["stream"] and resumed["gops"] == 3
    assert 0 in resumed["resumed"]  # GOP 0 came from the journal
    if topology == "1-device" or variant == "i2v":  # a chain: one GOP a chunk
        assert resumed["interrupted"]
    if resumed["interrupted"]:  # stopped before its second chunk: GOP 2 was coded in the second run
        assert 2 not in resumed["resumed"]
    else:  # the whole clip in one chunk: every GOP from the journal
        assert resumed["resumed"] == [0, 1, 2]


# ----------------------------------------------------------------------------- 4 devices: the extras

@pytest.fixture(scope="module")
def four_devices(matrix):
    return matrix("4-devices")[0]["extras"]


@pytest.mark.parametrize("case", ["t2v", "t2v_gop_atoms"])
def test_bytes_do_not_depend_on_the_device_count(four_devices, case):
    res = four_devices[case]
    assert 4 in res["encode_4"]["mesh_sizes"]  # the 4-device run really went through a 4-device shard_map
    assert res["encode_1"]["gops"] == 3
    for n in (2, 4):
        assert res[f"encode_{n}"]["stream"] == res["encode_1"]["stream"]
        assert res[f"encode_{n}"]["video"] == res["encode_1"]["video"]


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


def test_a_model_directory_loads_straight_onto_the_weight_shards(four_devices):
    w = four_devices["weights"]
    assert w["loaded_on_shards_equal"] and w["loaded_fingerprint_equal"]
    assert w["loaded_on_shards_per_device"] == w["param_bytes_per_device"] < w["param_bytes_total"] / 3


def test_one_and_four_devices_give_the_same_stream_with_stages(four_devices):
    """FLF2V with a stage plan (32x32 until step 2, then 64x48; tests/test_mr_trajectory.py), 3 GOPs sharing
    boundaries: per-stage anchored conditioning under shard_map gives the 1-device stream and video on 4
    devices, and the 1-device stream decodes on 4 devices, strictly, to the same video."""
    assert four_devices["stages"] == {"devices": 4, "gops": 3, "plan": True, "same_stream": True,
                                      "same_video": True, "decoded_on_4": True}


def test_bench_gop_abstract_splits_the_weights_per_device(four_devices):
    assert "error" not in four_devices["abstract"], four_devices["abstract"]
    whole, split = four_devices["abstract"]["1"], four_devices["abstract"]["4"]
    w = four_devices["weights"]  # the arguments shrink by exactly what splitting the weights saves
    assert whole - split == w["param_bytes_total"] - w["param_bytes_per_device"] > 0
