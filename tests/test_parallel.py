"""GOPs side by side on a ``gop`` mesh axis (gvc_jax.parallel): the bytes and the video do not
depend on the number of devices, and a stream coded on N devices decodes on any other count."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

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
    run = mesh.map("test", lambda a, b: a + b, plain=lambda a, b: calls.append(b) or a + b)
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
