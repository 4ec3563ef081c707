"""Resume journals verified, not trusted: a journal that was damaged or edited (its CRCs recomputed)
is refused with one line naming it, or cannot change the stream; the journal is kept as it was and
no output is written. An I2V chain (3 GOPs of 9 frames), so entries hold context frames."""
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import FAST_I2V, noise_video
from test_resume import SOURCE, unit_expect

from gvc_jax import cli
from gvc_jax import encode as encode_cli
from gvc_jax.codec.gop import journal as jrnl
from gvc_jax.io.video_writer import write_video

ARGS = FAST_I2V
# the coded size (multiples of 16), the topology matrix's (its programs come from the suite's compilation
# cache); I2V GOPs [0, 9), [8, 17), [16, 25): context frames 8, 16
H, W = 48, 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An uninterrupted ``--resume`` encode stopped just before its stream is assembled: -> (input,
    its stream, its journal holding all 3 GOPs)."""
    from gvc_jax.codec.format import bitstream

    d = tmp_path_factory.mktemp("hostile-journal")
    clip = str(d / "in.npy")
    write_video(clip, noise_video(3, 25, W, H), 16.0)  # [25, H, W, 3]; its own file: a test alters it and restores it
    out = str(d / "full.gvc")
    real, kept = bitstream.assemble, {}

    def stop(header, framed):
        kept["stream"] = real(header, framed)
        raise KeyboardInterrupt  # the journal is kept, as after a kill
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bitstream, "assemble", stop)
        assert cli.run_main(encode_cli.main, [clip, "-o", out, *ARGS, "--resume"]) == 130
    with open(jrnl.journal_path(out), "rb") as f:
        journal = f.read()
    assert not os.path.exists(out) and len(entries(journal)) == 3
    return clip, kept["stream"], journal


def entries(journal: bytes) -> list:
    """-> [(gop, source digest, record, [(frame, H, W, zlib bytes)])] of a version-2 journal."""
    out, pos = [], jrnl._HEAD
    while pos < len(journal):
        gop, n = struct.unpack_from(">II", journal, pos)
        body = journal[pos + 16:pos + 16 + n]
        (rn,) = struct.unpack_from(">I", body, 16)
        record = body[20:20 + rn]
        (count,) = struct.unpack_from(">H", body, 20 + rn)
        p, frames = 22 + rn, []
        for _ in range(count):
            f, h, w, zn = struct.unpack_from(">IHHI", body, p)
            frames.append((f, h, w, body[p + 12:p + 12 + zn]))
            p += 12 + zn
        out.append((gop, body[:16], record, frames))
        pos += 16 + n
    return out


def build(journal: bytes, items) -> bytes:
    """A journal with the head of ``journal`` and ``items`` as its entries (CRCs recomputed, as an
    editor would)."""
    return journal[:jrnl._HEAD] + b"".join(
        jrnl._encode_entry(g, rec, src, {f: (h, w, z) for f, h, w, z in frames}) for g, src, rec, frames in items)


def refused(run, tmp_path, capsys, journal: bytes, match: str, clip=None) -> str:
    """Resume with ``journal`` in place: exit 2, one line naming the journal and matching ``match``;
    the journal unchanged, no output."""
    out = str(tmp_path / "a.gvc")
    path = jrnl.journal_path(out)
    with open(path, "wb") as f:
        f.write(journal)
    capsys.readouterr()
    assert cli.run_main(encode_cli.main, [clip or run[0], "-o", out, *ARGS, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and path in err and match in err, err
    with open(path, "rb") as f:
        assert f.read() == journal
    assert not os.path.exists(out)
    return err


def _pixels(z: bytes) -> np.ndarray:
    return np.frombuffer(zlib.decompress(z), np.uint8).reshape(H, W, 3)


def _bomb_z() -> bytes:
    """zlib of 16384 x 16384 x 3 zero bytes (805 MB), made a piece at a time (about 780 kB)."""
    c, piece, parts = zlib.compressobj(9), bytes(1 << 24), []
    for _ in range(16384 * 16384 * 3 // len(piece)):
        parts.append(c.compress(piece))
    parts.append(c.flush())
    return b"".join(parts)


# Peak memory as VmHWM (this process's own): ru_maxrss would carry the pytest worker's over fork + exec.
MEASURE = """
import sys
from gvc_jax import cli, encode
rc = cli.run_main(encode.main, sys.argv[2:])
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
with open(sys.argv[1], "w") as f:
    f.write(f"{rc} {peak_kb}")
"""


def _measured(tmp_path, name: str, journal: bytes, clip: str) -> tuple:
    """Resume with ``journal`` in a fresh process: -> (exit status, peak RSS in MB, stderr)."""
    out = str(tmp_path / f"{name}.gvc")
    with open(jrnl.journal_path(out), "wb") as f:
        f.write(journal)
    report = str(tmp_path / f"{name}.txt")
    proc = subprocess.run([sys.executable, "-c", MEASURE, report, clip, "-o", out, *ARGS, "--resume"],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                          timeout=600)  # a hang guard
    rc, rss_kb = open(report).read().split()
    with open(jrnl.journal_path(out), "rb") as f:
        assert f.read() == journal
    assert not os.path.exists(out)
    return int(rc), int(rss_kb) / 1024, proc.stderr.strip()


def test_size_bomb_is_refused_in_bounded_memory(run, tmp_path):
    """GOP 0's entry declares a 16384 x 16384 context frame that inflates to 805 MB (CRC valid): refused
    from its declared size, nothing inflated. Compared with a journal refused for its frame index."""
    clip, _, journal = run
    (g0, s0, r0, [(f, h, w, z)]), *rest = entries(journal)
    bomb = build(journal, [(g0, s0, r0, [(f, 16384, 16384, _bomb_z())]), *rest])
    assert len(bomb) > 700_000
    base = build(journal, [(g0, s0, r0, [(f - 1, h, w, z)]), *rest])
    rc0, rss_base, _ = _measured(tmp_path, "base", base, clip)
    rc, rss_bomb, err = _measured(tmp_path, "bomb", bomb, clip)
    print(f"size bomb: {len(bomb)} B journal, refused with peak RSS {rss_bomb:.0f} MB; baseline {rss_base:.0f} MB")
    assert rc0 == 2 and rc == 2
    assert err.startswith("error: ") and "\n" not in err and "holds a 16384x16384 frame" in err, err
    assert jrnl.journal_path(str(tmp_path / "bomb.gvc")) in err
    assert rss_bomb - rss_base < 200, (rss_bomb, rss_base)  # MB; inflating it would take 805


def test_wrong_frame_index_is_refused(run, tmp_path, capsys):
    _, _, journal = run
    (g0, s0, r0, [(f, h, w, z)]), *rest = entries(journal)
    refused(run, tmp_path, capsys, build(journal, [(g0, s0, r0, [(f - 1, h, w, z)]), *rest]),
            "holds source frame 7 where GOP 0's context is frame 8")


def test_entry_without_frames_is_refused(run, tmp_path, capsys):
    _, _, journal = run
    (g0, s0, r0, _), *rest = entries(journal)
    refused(run, tmp_path, capsys, build(journal, [(g0, s0, r0, []), *rest]), "holds 0 context frames, GOP 0 has 1")


def test_record_of_another_gop_is_refused(run, tmp_path, capsys):
    _, _, journal = run
    (g0, s0, r0, fr0), (g1, s1, r1, fr1), _ = entries(journal)
    refused(run, tmp_path, capsys, build(journal, [(g0, s0, r1, fr0), (g1, s1, r1, fr1)]),
            "holds a record that is not GOP 0's")


def test_tampered_frame_cannot_change_the_stream(run, tmp_path, capsys):
    """A context frame changed in the journal (CRC recomputed). GOPs 0 and 1 journalled, GOP 2 to code:
    GOP 1 is replayed from its record (GOP 2 conditions on it), never taken from the journal, so a
    changed frame of GOP 1 leaves the stream byte for byte the clean encode's, and a changed frame
    of GOP 0 (what GOP 1's replay conditions on) fails the replay's latent check: refused."""
    clip, stream, journal = run
    (g0, s0, r0, [(f0, h, w, z0)]), (g1, s1, r1, [(f1, _, _, z1)]), _ = entries(journal)
    z1_bad = zlib.compress((255 - _pixels(z1)).tobytes())
    out = str(tmp_path / "ok.gvc")
    with open(jrnl.journal_path(out), "wb") as f:
        f.write(build(journal, [(g0, s0, r0, [(f0, h, w, z0)]), (g1, s1, r1, [(f1, h, w, z1_bad)])]))
    assert cli.run_main(encode_cli.main, [clip, "-o", out, *ARGS, "--resume"]) == 0
    with open(out, "rb") as f:
        assert f.read() == stream
    assert not os.path.exists(jrnl.journal_path(out))

    z0_bad = zlib.compress((255 - _pixels(z0)).tobytes())
    refused(run, tmp_path, capsys, build(journal, [(g0, s0, r0, [(f0, h, w, z0_bad)]), (g1, s1, r1, [(f1, h, w, z1)])]),
            "GOP 1: replaying the record journalled in")


def test_input_changed_in_place_is_refused_naming_the_gop(run, tmp_path, capsys):
    """One pixel of frame 12 (GOP 1 only) changed in place, the size and mtime kept: the journal's
    key (path, size, mtime) still matches, GOP 1's source digest does not. (The module's input is
    changed and restored afterwards, byte and mtime.)"""
    clip, _, journal = run
    st = os.stat(clip)
    video = np.load(clip, mmap_mode="r+")
    video[12, 5, 7, 0] ^= 0xFF
    video.flush()
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        assert os.stat(clip).st_size == st.st_size and os.stat(clip).st_mtime_ns == st.st_mtime_ns
        refused(run, tmp_path, capsys, build(journal, entries(journal)[:2]),
                "input frames of GOP 1 differ from those journalled in")
    finally:
        video[12, 5, 7, 0] ^= 0xFF
        video.flush()
        del video
        os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_old_version_journal_is_refused(run, tmp_path, capsys):
    _, _, journal = run
    old = journal[:len(jrnl.MAGIC)] + bytes([1]) + journal[len(jrnl.MAGIC) + 1:]
    err = refused(run, tmp_path, capsys, old, "version-1 resume journal")
    assert "delete it" in err


# ------------------------------------------------------------------ the journal alone (no model)

def _unit_journal(tmp_path, count=3):
    out = str(tmp_path / "x.gvc")
    j = jrnl.Journal.open(out, b"k" * 32, unit_expect())
    for g in range(count):
        j.add(g, b"record-%d" % g, {8: np.full((6, 4, 3), g, np.uint8)} if g == 0 else None, source=SOURCE)
    j.close()
    path = jrnl.journal_path(out)
    with open(path, "rb") as f:
        return out, path, f.read()


def _reopen_refused(out, path, data, match):
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(jrnl.JournalError, match=re.escape(match)) as err:
        jrnl.Journal.open(out, b"k" * 32, unit_expect())
    assert path in str(err.value) and "\n" not in str(err.value)
    with open(path, "rb") as f:
        assert f.read() == data


@pytest.mark.parametrize("cut", ["head", "body", "crc", "zeros"])
def test_a_torn_last_entry_is_cut_after_the_others_verified(tmp_path, cut):
    out, path, data = _unit_journal(tmp_path)
    last = jrnl._HEAD + len(b"".join(build_entry(g) for g in range(2)))
    whole = data[:last]
    tail = {"head": data[last:last + 10], "body": data[:-3][last:],
            "crc": data[last:-1] + bytes([data[-1] ^ 1]), "zeros": bytes(len(data) - last)}[cut]
    with open(path, "wb") as f:
        f.write(whole + tail)
    j = jrnl.Journal.open(out, b"k" * 32, unit_expect())
    assert sorted(j.entries) == [0, 1]
    j.close()
    with open(path, "rb") as f:
        assert f.read() == whole


def build_entry(g: int) -> bytes:
    """The entry ``_unit_journal`` writes for GOP g."""
    frames = {8: np.full((6, 4, 3), g, np.uint8)} if g == 0 else {}
    return jrnl._encode_entry(g, b"record-%d" % g, SOURCE, jrnl._pack_frames(frames))


def test_damage_before_the_last_entry_is_refused_not_cut(tmp_path):
    out, path, data = _unit_journal(tmp_path)
    first = jrnl._HEAD + len(build_entry(0))
    body = bytearray(data)
    body[first - 1] ^= 1  # GOP 0's body: its CRC fails, and entries follow it
    _reopen_refused(out, path, bytes(body), "entry of GOP 0 at byte 41 is damaged")
    head = bytearray(data)
    head[first + 2] ^= 1  # GOP 1's head
    _reopen_refused(out, path, bytes(head), f"entry at byte {first} is damaged")


def test_entries_that_do_not_fit_the_encode_are_refused(tmp_path):
    out, path, data = _unit_journal(tmp_path, count=0)
    frame = jrnl._pack_frames({8: np.zeros((6, 4, 3), np.uint8)})[8]
    bad = {
        "is past the encode's 3 GOPs": jrnl._encode_entry(3, b"record-3", SOURCE, {}),
        "not GOP 1's": jrnl._encode_entry(1, b"record-0", SOURCE, {}),
        "holds 1 context frames, GOP 1 has 0": jrnl._encode_entry(1, b"record-1", SOURCE, {8: frame}),
        "holds a 5x6 frame": jrnl._encode_entry(0, b"record-0", SOURCE, {8: (6, 5, frame[2])}),
        "does not inflate to exactly 6x4x3": jrnl._encode_entry(0, b"record-0", SOURCE,
                                                                {8: (6, 4, zlib.compress(bytes(6 * 4 * 3 + 1)))}),
        "does not inflate (": jrnl._encode_entry(0, b"record-0", SOURCE, {8: (6, 4, b"not zlib")}),
    }
    for match, entry in bad.items():
        _reopen_refused(out, path, data + entry + build_entry(1), match)  # not the last: never taken for torn
        _reopen_refused(out, path, data + entry, match)                    # last, CRC good: refused, not cut


def test_oversized_or_repeated_entries_are_refused(tmp_path):
    """A whole entry longer than any of its GOP's can be is refused before its body is read; a GOP
    twice in one file is refused."""
    out, path, data = _unit_journal(tmp_path, count=1)
    expect = unit_expect()
    small = jrnl.Expect(3, 6, 4, expect.context, expect.record, max_record=64)
    big = jrnl._encode_entry(1, b"x" * 1000, SOURCE, {})
    with open(path, "wb") as f:
        f.write(data + big)
    with pytest.raises(jrnl.JournalError, match="the entry of GOP 1 declares 1022 bytes, more than any"):
        jrnl.Journal.open(out, b"k" * 32, small)
    _reopen_refused(out, path, data + build_entry(0), "holds GOP 0 twice")


def test_two_journals_with_different_records_of_a_gop_are_refused(tmp_path):
    """--distributed: every process reads every journal; the same GOP twice is fine if its record is."""
    out, path, _ = _unit_journal(tmp_path, count=1)
    loose = jrnl.Expect(3, 6, 4, unit_expect().context, lambda g, data: None)  # any record parses
    jrnl.Journal.open(out, b"k" * 32, loose, process=1, processes=2).close()
    with open(jrnl.journal_path(out, 1), "ab") as f:
        f.write(build_entry(0))
    assert sorted(jrnl.Journal.read(out, b"k" * 32, loose, process=0, processes=2).entries) == [0]
    with open(jrnl.journal_path(out, 1), "ab") as f:
        f.write(jrnl._encode_entry(1, b"record-x", SOURCE, {}))
    with open(path, "ab") as f:
        f.write(jrnl._encode_entry(1, b"record-1", SOURCE, {}))
    with pytest.raises(jrnl.JournalError, match="hold different records of GOP 1"):
        jrnl.Journal.read(out, b"k" * 32, loose, process=0, processes=2)
