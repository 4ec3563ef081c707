"""GOPs side by side on a ``gop`` mesh axis (gvc_jax.parallel): the device count is validated, and
one device runs the plain programs. (That the bytes and the video do not depend on the number of
devices or processes, that a stream coded on N devices decodes on any other count, and the split
weights: the topology matrix, test_topology.py, with its 4-device and 2-process runs.)"""
import jax
import numpy as np
import pytest

from gvc_jax.parallel import DeviceCountError, GopMesh, check_devices


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
