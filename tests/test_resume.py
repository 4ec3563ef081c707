"""Resumable encodes: a killed ``encode --resume`` restarted with ``--resume`` codes only the GOPs
its journal does not hold and writes the same bytes as an uninterrupted run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import slow_t2v, step_progress_env, wait_for_stderr

from gvc_jax import cli
from gvc_jax import encode as encode_cli
from gvc_jax.codec.gop import journal as jrnl
from gvc_jax.io.ffmpeg import quiet_fork

ARGS = slow_t2v(100)  # slow enough to be killed between GOPs


@pytest.fixture(scope="module")
def clip(video_file):
    return video_file("noise", 1, 24, 16.0)  # 3 GOPs of 9 frames


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    out = str(d / "ref.gvc")
    assert cli.run_main(encode_cli.main, [clip, "-o", out, *ARGS, "--quiet"]) == 0
    with open(out, "rb") as f:
        return f.read()


def _killed_after_first_gop(clip, out, extra=()):
    env = step_progress_env()  # waited for: "GOP 1 step" on the progress bar
    with quiet_fork():
        proc = subprocess.Popen([sys.executable, "-m", "gvc_jax.encode", clip, "-o", out, *ARGS, "--resume", *extra],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_stderr(proc, b"GOP 1 step")  # GOP 0 is finished and journaled
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait(timeout=60)
    assert not os.path.exists(out)
    assert os.path.exists(jrnl.journal_path(out))


@pytest.mark.parametrize("extra", [(), ("--decoded", "rec.npy")])
def test_killed_encode_resumes_to_the_same_bytes(clip, reference, tmp_path, extra):
    out = str(tmp_path / "a.gvc")
    extra = tuple(str(tmp_path / e) if e.endswith(".npy") else e for e in extra)
    _killed_after_first_gop(clip, out, extra)
    report = str(tmp_path / "r.json")
    assert cli.run_main(encode_cli.main, [clip, "-o", out, *ARGS, "--resume", "--quiet", "--json", report, *extra]) == 0
    with open(out, "rb") as f:
        assert f.read() == reference
    with open(report) as f:
        resumed = json.load(f)["resumed_gops"]
    assert resumed and 0 in resumed and 2 not in resumed  # GOP 0 came from the journal, GOP 2 was coded now
    assert not os.path.exists(jrnl.journal_path(out))  # removed once the stream is written
    if extra:  # the reconstruction of the replayed GOPs equals the uninterrupted run's
        from gvc_jax import decode as decode_cli
        from gvc_jax.io.video_reader import read_video

        dec = str(tmp_path / "dec.npy")
        assert cli.run_main(decode_cli.main, [out, "-o", dec, "--model", "preset:tiny", "--quiet", "--strict"]) == 0
        np.testing.assert_array_equal(read_video(extra[1])[0], read_video(dec)[0])


def test_journal_of_another_run_is_refused_and_kept(clip, tmp_path, capsys):
    out = str(tmp_path / "a.gvc")
    _killed_after_first_gop(clip, out)
    path = jrnl.journal_path(out)
    before = open(path, "rb").read()
    other = [a if a != "3" else "4" for a in ARGS]  # -M 4: another stream
    assert cli.run_main(encode_cli.main, [clip, "-o", out, *other, "--resume", "--quiet"]) == 2
    assert "journal of a different encode" in capsys.readouterr().err
    assert open(path, "rb").read() == before and not os.path.exists(out)


def unit_expect(num_gops=3, height=6, width=4, context=None):
    """An ``Expect`` for journals written by hand: records ``record-G``, GOP 0 holding frame 8."""
    context = {0: (8,)} if context is None else context

    def record(g, data):
        if data != b"record-%d" % g:
            raise ValueError(f"not record-{g}")
    return jrnl.Expect(num_gops, height, width, lambda g: context.get(g, ()), record)


SOURCE = bytes(range(16))  # a source-frame digest


def test_journal_keeps_whole_entries_and_drops_a_torn_one(tmp_path):
    out = str(tmp_path / "x.gvc")
    expect = unit_expect()
    j = jrnl.Journal.open(out, b"k" * 32, expect)
    frame = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    j.add(0, b"record-0", {8: frame}, source=SOURCE)
    j.add(1, b"record-1", source=SOURCE)
    j.close()
    with open(jrnl.journal_path(out), "ab") as f:
        f.write(b"\x00\x00\x00\x02\x00\x00\x00\x10torn")  # a write cut short by a kill
    j = jrnl.Journal.open(out, b"k" * 32, expect)
    assert sorted(j.entries) == [0, 1] and j.entries[1].record == b"record-1"
    assert j.entries[0].source == SOURCE
    np.testing.assert_array_equal(j.entries[0].frames[8], frame)
    j.add(2, b"record-2", source=SOURCE)
    j.close()
    assert sorted(jrnl.Journal.open(out, b"k" * 32, expect).entries) == [0, 1, 2]  # appended after the cut
    with pytest.raises(jrnl.JournalError, match="different encode"):
        jrnl.Journal.open(out, b"q" * 32, expect)


def test_a_file_in_the_journals_place_is_never_touched(clip, tmp_path, capsys):
    out = str(tmp_path / "a.gvc")
    mine = jrnl.journal_path(out)
    with open(mine, "w") as f:
        f.write("my notes")
    assert cli.run_main(encode_cli.main, [clip, "-o", out, *ARGS, "--resume", "--quiet"]) == 2
    assert "not a resume journal" in capsys.readouterr().err
    assert open(mine).read() == "my notes" and not os.path.exists(out)
