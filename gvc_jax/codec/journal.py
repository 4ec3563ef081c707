"""The resume journal of an encode: each finished GOP's framed record, appended as it is done.

``encode --resume`` keeps ``OUTPUT.resume`` next to the output while it runs. An encode that is
killed (a preempted TPU, a SIGKILL, a power cut) and started again with the same command and
``--resume`` reads the journal, skips the GOPs it holds and codes only the rest; the stream it
writes is byte for byte the one an uninterrupted run writes (tested). The journal is removed when
the stream has been written.

The journal is bound to its run: it starts with a key, the SHA-256 of everything that decides the
bytes (the stream header, the encoder-only variant settings, per-GOP atoms, and the input file's
path, size and modification time). A journal with another key is refused (never silently reused
or replaced). Besides the record, an entry holds the decoded frames of the GOP that later GOPs
condition on (I2V: its last frame), so a resumed chain does not have to decode the GOPs before it.

With several processes (``encode --distributed --resume``) each process journals the GOPs it codes
in its own file (``OUTPUT.resume`` for process 0, ``OUTPUT.resume.I`` for process I) and reads
every process's journal when it starts, so a restarted job skips what any process finished.

Layout: ``b"GVCRESUM"``, u8 version, 32-byte key; then entries ``u32 gop, u32 record length,
record, u16 frame count, per frame (u32 source frame, u16 H, u16 W, u32 n, n bytes zlib of the
uint8 H x W x 3 pixels), u32 CRC-32 of the entry``. A torn last entry (the process died while
writing it) fails its CRC and is dropped, and the file is cut back to the last whole entry.
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import Dict, Optional, Tuple

import numpy as np

MAGIC = b"GVCRESUM"
VERSION = 1
SUFFIX = ".resume"
_HEAD = len(MAGIC) + 1 + 32


class JournalError(ValueError):
    """A resume journal that belongs to another run, or a file in its place that is not one."""


def journal_path(output: str, process: int = 0) -> str:
    return os.fspath(output) + SUFFIX + (f".{process}" if process else "")


def run_key(*parts) -> bytes:
    """SHA-256 of the parts that decide the stream's bytes (bytes, or anything with a stable repr)."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, (bytes, bytearray)) else repr(part).encode()
        h.update(struct.pack(">Q", len(data)) + bytes(data))
    return h.digest()


def input_identity(path) -> tuple:
    """What names an input file's content cheaply: its absolute path, size and mtime."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def check_journal_path(output: str, process: int = 0) -> None:
    """Before any work: refuse a file in the journal's place that is not a journal."""
    path = journal_path(output, process)
    if os.path.lexists(path):
        ok = os.path.isfile(path) and not os.path.islink(path)
        if ok:
            with open(path, "rb") as f:
                ok = f.read(len(MAGIC)) == MAGIC
        if not ok:
            raise JournalError(f"{path} exists and is not a resume journal; move it away")


class Entry:
    __slots__ = ("gop", "record", "frames")

    def __init__(self, gop: int, record: bytes, frames: Dict[int, np.ndarray]):
        self.gop, self.record, self.frames = gop, record, frames


def _encode_entry(entry: Entry) -> bytes:
    parts = [struct.pack(">II", entry.gop, len(entry.record)), entry.record, struct.pack(">H", len(entry.frames))]
    for f, px in sorted(entry.frames.items()):
        px = np.ascontiguousarray(px, np.uint8)
        z = zlib.compress(px.tobytes(), 1)
        parts += [struct.pack(">IHHI", f, px.shape[0], px.shape[1], len(z)), z]
    body = b"".join(parts)
    return body + struct.pack(">I", zlib.crc32(body))


def _decode_entries(data: bytes, pos: int) -> Tuple[Dict[int, Entry], int]:
    """-> (entries by GOP, end of the last whole entry)."""
    entries: Dict[int, Entry] = {}
    while True:
        start = pos
        try:
            gop, n = struct.unpack_from(">II", data, pos)
            pos += 8
            record = data[pos:pos + n]
            pos += n
            (count,) = struct.unpack_from(">H", data, pos)
            pos += 2
            frames = {}
            for _ in range(count):
                f, h, w, zn = struct.unpack_from(">IHHI", data, pos)
                pos += 12
                raw = zlib.decompress(data[pos:pos + zn])
                pos += zn
                frames[f] = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
            (crc,) = struct.unpack_from(">I", data, pos)
            if len(record) != n or crc != zlib.crc32(data[start:pos]):
                return entries, start
            pos += 4
        except (struct.error, zlib.error, ValueError):
            return entries, start
        entries[gop] = Entry(gop, bytes(record), frames)


def _read_journal(path: str, key: bytes) -> Tuple[Dict[int, "Entry"], int]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEAD or data[len(MAGIC)] != VERSION or data[len(MAGIC) + 1:_HEAD] != key:
        raise JournalError(f"{path} is the journal of a different encode (other input, settings or "
                           f"model); delete it to start over, or rerun the command that made it")
    return _decode_entries(data, _HEAD)


class Journal:
    """``OUTPUT.resume``: open (continuing a journal with the same key) or start one."""

    def __init__(self, path: str, key: bytes):
        self.path, self.key = os.fspath(path), key
        self.entries: Dict[int, Entry] = {}
        self._file = None

    @classmethod
    def open(cls, output: str, key: bytes, process: int = 0, processes: int = 1) -> "Journal":
        """The journal of ``output`` for the run ``key``: its finished GOPs, ready to append.
        With ``processes`` > 1: process ``process``'s own journal, and in ``entries`` the finished
        GOPs of every process's journal (read now, before anyone appends: the caller syncs)."""
        j = cls(journal_path(output, process), key)
        check_journal_path(output, process)
        for other in range(processes):
            if other != process and os.path.isfile(journal_path(output, other)):
                j.entries.update(_read_journal(journal_path(output, other), key)[0])
        if os.path.lexists(j.path):
            entries, end = _read_journal(j.path, key)
            j.entries.update(entries)
            j._file = open(j.path, "r+b")
            j._file.truncate(end)  # drop a torn last entry
            j._file.seek(end)
        else:
            j._file = open(j.path, "xb")
            j._file.write(MAGIC + bytes([VERSION]) + key)
            j._sync()
        return j

    def add(self, gop: int, record: bytes, frames: Optional[Dict[int, np.ndarray]] = None) -> None:
        entry = Entry(gop, bytes(record), dict(frames or {}))
        self._file.write(_encode_entry(entry))
        self._sync()
        self.entries[gop] = entry

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        """The stream is written: the journal has served its purpose."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
