"""The resume journal of an encode: each finished GOP's framed record, appended as it is done.

``encode --resume`` keeps ``OUTPUT.resume`` next to the output while it runs. An encode that is
killed (a preempted TPU, a SIGKILL, a power cut) and started again with the same command and
``--resume`` reads the journal, skips the GOPs it holds and codes only the rest; the stream it
writes is byte for byte the one an uninterrupted run writes (tested). The journal is removed when
the stream has been written.

The journal is bound to its run: it starts with a key, the SHA-256 of everything that decides the
bytes (the stream header, the encoder-only variant settings, per-GOP atoms, and the input file's
path, size and modification time). A journal with another key is refused (never silently reused
or replaced), and so is a journal of another layout version (delete it to start over).

**Verified, not trusted.** A journal is a file anyone may have damaged or edited, so nothing in it
is believed without a check, and every check comes before the work or allocation it guards:

- the journal is read an entry at a time; each entry's head (GOP, body length, body CRC) has its
  own CRC, the body's length is bounded by what that GOP's entry can hold (the longest record of
  the stream, and the GOP's context frames at the coded size) before the body is read, and the
  body's CRC-32 (over the compressed bytes) is checked before anything in it is parsed or inflated;
- then the body is checked against the encode's plan and header (``Expect``): the GOP is one of
  the stream's, its record parses as that GOP's record, it holds exactly the context frames of
  that GOP (``loop.context_frames``), each at the stream's coded size, and each inflates
  (``zlib.decompressobj().decompress(z, H*W*3)``) to exactly H*W*3 bytes. A small file
  declaring huge frames costs nothing. A GOP appears once in a file (and, across the files of
  several processes, always with the same record);
- each entry holds a digest (SHA-256, 16 bytes) of its GOP's source frames as the encoder read
  them (uint8, at the coded size). A resumed encode reads the frames of the journalled GOPs again
  (in reading order, as it reads the others) and refuses an input whose frames differ, naming the
  GOP, instead of mixing old and new GOPs (an input changed in place with its size and mtime
  kept has the same key);
- the decoded frames an entry holds (I2V: its GOP's last frame, which the next GOP conditions
  on) are only a cache and never reach the output unverified. A GOP that is coded now and
  conditions on a journalled GOP does not take that GOP's journalled frames: the journalled GOP
  is replayed from its record (the decoder's path, ``loop.ResumedTargets``) and its replayed
  latent must equal the record's latent hash, else the resume is refused. Only that replay takes
  journalled frames (of the GOP before it) as its context: a change to them that changes the
  replayed latent is refused, and one that does not cannot reach the output, since the coded
  GOPs condition on the replayed frames. Cost: one GOP replay per chain on resume (I2V; T2V and
  FLF2V GOPs condition on no decoded frames), none for the GOPs nothing coded now depends on. A
  keyed digest would not do: its key would have to be kept where the journal's editor reads it.

What is not verified: the picks of a record edited with its CRCs recomputed (a record is the
stream's own bytes, and only a decode could check it; the replayed ones are checked against their
latent hash, so there only an edit that also recomputes that hash, which takes a decode, passes).
Any entry that fails a check is a one-line ``JournalError`` naming the journal, and the journal
is kept as it is. The only cut is the documented one: a last entry that is incomplete or
fails its CRC (the process died while writing it, or its tail never reached the disk) is dropped,
and the file is cut back to the last whole entry, once every entry before it has verified.

With several processes (``encode --distributed --resume``) each process journals the GOPs it codes
in its own file (``OUTPUT.resume`` for process 0, ``OUTPUT.resume.I`` for process I) and reads
every process's journal when it starts, so a restarted job skips what any process finished.

Layout (version 2): ``b"GVCRESUM"``, u8 version, 32-byte key; then entries, each
``u32 gop, u32 body length, u32 CRC-32 of the body, u32 CRC-32 of these 12 bytes``, then the body:
``16-byte source digest, u32 record length, record (framed as in the stream), u16 frame count,
per frame (u32 source frame, u16 H, u16 W, u32 n, n bytes zlib of the uint8 H x W x 3 pixels)``.
"""
from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

MAGIC = b"GVCRESUM"
VERSION = 2
SUFFIX = ".resume"
_HEAD = len(MAGIC) + 1 + 32
_ENTRY_HEAD = struct.Struct(">IIII")  # gop, body length, body CRC, CRC of the first 12 bytes
_FRAME_HEAD = struct.Struct(">IHHI")  # source frame, H, W, compressed length
DIGEST_BYTES = 16


class JournalError(ValueError):
    """A resume journal that belongs to another run, does not fit this encode, or is damaged, or a
    file in its place that is not one."""


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
    """What names an input file's content cheaply: its absolute path, size and mtime (the frames
    themselves are checked GOP by GOP, ``SourceCheck``)."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def frames_digest(frames: np.ndarray) -> bytes:
    """``DIGEST_BYTES`` of SHA-256 over a GOP's uint8 source frames (their shape, then their bytes)."""
    a = np.ascontiguousarray(frames)
    if a.dtype != np.uint8:
        raise TypeError(f"source frames must be uint8, got {a.dtype}")
    h = hashlib.sha256(repr(a.shape).encode())
    h.update(a.data.cast("B"))  # a.data: memoryview(a)
    return h.digest()[:DIGEST_BYTES]


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


@dataclass(frozen=True)
class Expect:
    """What the entries of one encode's journal may hold, from its plan and header: checked before
    anything an entry declares is allocated or inflated."""

    num_gops: int
    height: int                                # the stream's coded size: every context frame's
    width: int
    context: Callable[[int], Tuple[int, ...]]  # GOP -> the source frames its entry holds (loop.context_frames)
    record: Callable[[int, bytes], object]     # GOP, framed record -> parsed; raises ValueError if it is not
                                               # that GOP's record
    max_record: int = 1 << 27                  # the longest framed record a GOP of the stream can have


class Entry:
    """A verified journal entry: its GOP's framed record, the digest of its source frames and its
    context frames (kept compressed, inflated on access)."""

    __slots__ = ("gop", "record", "source", "path", "_packed")

    def __init__(self, gop: int, record: bytes, source: bytes, packed: Dict[int, Tuple[int, int, bytes]],
                 path: str = ""):
        self.gop, self.record, self.source, self.path, self._packed = gop, record, source, path, packed

    @property
    def frames(self) -> Dict[int, np.ndarray]:
        """Source frame -> uint8 [H, W, 3] decoded pixels (a cache: see the module's docstring)."""
        return {f: _inflate(z, h, w) for f, (h, w, z) in self._packed.items()}


def _inflate(z: bytes, h: int, w: int) -> np.ndarray:
    """``z`` -> uint8 [h, w, 3], inflating at most h*w*3 bytes; raises ValueError unless exact."""
    size = h * w * 3
    d = zlib.decompressobj()
    try:
        raw = d.decompress(z, size)
    except zlib.error as err:
        raise ValueError(f"does not inflate ({err})") from None
    if len(raw) != size or not d.eof or d.unconsumed_tail or d.unused_data:
        raise ValueError(f"does not inflate to exactly {h}x{w}x3 pixels")
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def _pack_frames(frames: Dict[int, np.ndarray]) -> Dict[int, Tuple[int, int, bytes]]:
    out = {}
    for f, px in sorted(frames.items()):
        px = np.ascontiguousarray(px, np.uint8)
        if px.ndim != 3 or px.shape[2] != 3:
            raise ValueError(f"context frame {f}: expected [H, W, 3], got {px.shape}")
        out[int(f)] = (px.shape[0], px.shape[1], zlib.compress(px.tobytes(), 1))
    return out


def _encode_entry(gop: int, record: bytes, source: bytes, packed: Dict[int, Tuple[int, int, bytes]]) -> bytes:
    if len(source) != DIGEST_BYTES:
        raise ValueError(f"a source digest has {DIGEST_BYTES} bytes, got {len(source)}")
    parts = [source, struct.pack(">I", len(record)), record, struct.pack(">H", len(packed))]
    for f, (h, w, z) in sorted(packed.items()):
        parts += [_FRAME_HEAD.pack(f, h, w, len(z)), z]
    body = b"".join(parts)
    head = struct.pack(">III", gop, len(body), zlib.crc32(body))
    return head + struct.pack(">I", zlib.crc32(head)) + body


def _parse_body(path: str, gop: int, body: bytes, expect: Expect) -> Entry:
    """A body whose CRC is good -> Entry, checked against ``expect`` before any frame is inflated."""
    def bad(what: str) -> JournalError:  # one line, naming the journal and the GOP
        return JournalError(f"{path}: the entry of GOP {gop} {what}: it is not a journal of this encode, or it "
                            f"was altered; delete {path} to start over")

    if gop >= expect.num_gops:
        raise bad(f"is past the encode's {expect.num_gops} GOPs")
    pos = DIGEST_BYTES
    if len(body) < pos + 4:
        raise bad("is too short")
    source = body[:DIGEST_BYTES]
    (n,) = struct.unpack_from(">I", body, pos)
    pos += 4
    if n > len(body) - pos - 2:
        raise bad(f"declares a record of {n} bytes, more than it holds")
    record = body[pos:pos + n]
    pos += n
    try:
        expect.record(gop, record)
    except (ValueError, struct.error) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise bad(f"holds a record that is not GOP {gop}'s ({why})") from err
    (count,) = struct.unpack_from(">H", body, pos)
    pos += 2
    want = tuple(expect.context(gop))
    if count != len(want):
        raise bad(f"holds {count} context frames, GOP {gop} has {len(want)} ({', '.join(map(str, want)) or 'none'})")
    packed = {}
    for f_want in want:
        if len(body) - pos < _FRAME_HEAD.size:
            raise bad("is too short for its frames")
        f, h, w, zn = _FRAME_HEAD.unpack_from(body, pos)
        pos += _FRAME_HEAD.size
        if f != f_want:
            raise bad(f"holds source frame {f} where GOP {gop}'s context is frame {f_want}")
        if (h, w) != (expect.height, expect.width):
            raise bad(f"holds a {w}x{h} frame, the stream's coded size is {expect.width}x{expect.height}")
        if zn > len(body) - pos:
            raise bad(f"declares {zn} compressed bytes for frame {f}, more than it holds")
        z = body[pos:pos + zn]
        pos += zn
        try:
            _inflate(z, h, w)  # bounded by the coded size; dropped: kept compressed until it is used
        except ValueError as err:
            raise bad(f"frame {f} {err}") from err
        packed[f] = (h, w, z)
    if pos != len(body):
        raise bad(f"has {len(body) - pos} bytes after its frames")
    return Entry(gop, record, source, packed, path)


def _zlib_bound(n: int) -> int:
    """The most bytes zlib compresses ``n`` bytes to (zlib's ``compressBound``)."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13


def _max_body(expect: Expect, gop: int) -> int:
    """The longest body GOP ``gop``'s entry can have: a record of at most ``expect.max_record``
    bytes, and its context frames at the coded size."""
    frame = _FRAME_HEAD.size + _zlib_bound(expect.height * expect.width * 3)
    return DIGEST_BYTES + 4 + expect.max_record + 2 + len(expect.context(gop)) * frame


def _only_zeros(f, chunk: int = 1 << 20) -> bool:
    """Whether the rest of file ``f`` holds only zero bytes (read a piece at a time)."""
    while True:
        piece = f.read(chunk)
        if not piece:
            return True
        if piece.strip(b"\0"):
            return False


def _read_journal(path: str, key: bytes, expect: Expect) -> Tuple[Dict[int, Entry], int, int]:
    """-> (verified entries by GOP, end of the last whole entry, file size). Raises JournalError for
    a journal of another run or version, or an entry that does not verify (other than a torn last
    one, which is left out). Read an entry at a time, each body's length bounded first."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD)
        if head[:len(MAGIC)] != MAGIC:
            raise JournalError(f"{path} is not a resume journal; move it away")
        if len(head) > len(MAGIC) and head[len(MAGIC)] != VERSION:
            raise JournalError(f"{path} is a version-{head[len(MAGIC)]} resume journal, this gvc-jax reads version "
                               f"{VERSION}; delete it to start over")
        if len(head) < _HEAD or head[len(MAGIC) + 1:] != key:
            raise JournalError(f"{path} is the journal of a different encode (other input, settings or "
                               f"model); delete it to start over, or rerun the command that made it")
        entries: Dict[int, Entry] = {}
        pos = _HEAD
        while pos < size:
            eh = f.read(_ENTRY_HEAD.size)
            if len(eh) < _ENTRY_HEAD.size:
                break  # a head cut short: the last write was torn
            gop, n, crc, head_crc = _ENTRY_HEAD.unpack(eh)
            if zlib.crc32(eh[:12]) != head_crc:
                if not eh.strip(b"\0") and _only_zeros(f):
                    break  # zeros where the last entry should be: it never reached the disk
                raise JournalError(f"{path}: the entry at byte {pos} is damaged (its head fails its CRC); "
                                   f"delete {path} to start over")
            end = pos + _ENTRY_HEAD.size + n
            if end > size:
                break  # the last entry is cut short
            if gop < expect.num_gops and n > _max_body(expect, gop):
                raise JournalError(f"{path}: the entry of GOP {gop} declares {n} bytes, more than any entry of "
                                   f"this encode's GOP {gop} holds; delete {path} to start over")
            body = f.read(n)
            if len(body) != n:
                break  # the file shrank while it was read
            if zlib.crc32(body) != crc:
                if end == size:
                    break  # the last entry, torn
                raise JournalError(f"{path}: the entry of GOP {gop} at byte {pos} is damaged (it fails its CRC); "
                                   f"delete {path} to start over")
            entry = _parse_body(path, gop, body, expect)
            if gop in entries:
                raise JournalError(f"{path} holds GOP {gop} twice; delete {path} to start over")
            entries[gop] = entry
            pos = end
    return entries, pos, size


class Journal:
    """``OUTPUT.resume``: open (continuing a journal with the same key) or start one."""

    def __init__(self, path: str, key: bytes, expect: Optional[Expect] = None):
        self.path, self.key, self.expect = os.fspath(path), key, expect
        self.entries: Dict[int, Entry] = {}
        self._file: Optional[IO[bytes]] = None
        self._end: Optional[int] = None   # end of the own file's last whole entry (None: no file yet)
        self._size = 0

    @classmethod
    def read(cls, output: str, key: bytes, expect: Expect, process: int = 0, processes: int = 1) -> "Journal":
        """The journal of ``output`` for the run ``key``, read and verified, not yet writable (``begin``).
        With ``processes`` > 1: process ``process``'s own journal, and in ``entries`` the verified
        GOPs of every process's journal."""
        j = cls(journal_path(output, process), key, expect)
        check_journal_path(output, process)
        for other in range(processes):
            path = journal_path(output, other)
            if other != process and os.path.isfile(path):
                for e in _read_journal(path, key, expect)[0].values():
                    j._merge(e)
        if os.path.lexists(j.path):
            entries, j._end, j._size = _read_journal(j.path, key, expect)
            for e in entries.values():
                j._merge(e)
        return j

    @classmethod
    def open(cls, output: str, key: bytes, expect: Expect, process: int = 0, processes: int = 1) -> "Journal":
        """``read``, then ``begin``: the verified finished GOPs, ready to append."""
        j = cls.read(output, key, expect, process, processes)
        j.begin()
        return j

    def _merge(self, e: Entry) -> None:
        have = self.entries.get(e.gop)
        if have is not None and have.record != e.record:
            raise JournalError(f"{have.path} and {e.path} hold different records of GOP {e.gop}; delete them "
                               f"to start over")
        self.entries.setdefault(e.gop, e)

    def begin(self) -> None:
        """Open the own file for appending: cut a torn last entry (everything before it verified), or
        start the file. With several processes, only once every process has read every journal."""
        if self._end is not None:
            self._file = open(self.path, "r+b")
            if self._size != self._end:
                self._file.truncate(self._end)  # drop a torn last entry
                self._sync()
            self._file.seek(self._end)
        else:
            self._file = open(self.path, "xb")
            self._file.write(MAGIC + bytes([VERSION]) + self.key)
            self._sync()

    def add(self, gop: int, record: bytes, frames: Optional[Dict[int, np.ndarray]] = None, *, source: bytes) -> None:
        """Journal GOP ``gop``: its framed record, its ``context_frames`` pixels and the digest of its
        source frames (``frames_digest``)."""
        packed = _pack_frames(dict(frames or {}))
        entry = Entry(gop, bytes(record), bytes(source), packed, self.path)
        assert self._file is not None, "Journal.add before begin()"
        self._file.write(_encode_entry(gop, entry.record, entry.source, packed))
        self._sync()
        self.entries[gop] = entry

    def _sync(self) -> None:
        assert self._file is not None  # opened by begin()
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


class SourceCheck:
    """Each GOP's source frames, served in reading order and hashed (``frames_digest``): ``digest(g)``
    is what GOP g's journal entry records. The GOPs the journal holds are read as well, when a
    later GOP's frames are asked for (or at ``finish``), and a GOP whose frames differ from its
    entry's digest is refused: the input changed since the interrupted run.

    ``read(span)`` -> the GOP's uint8 frames at the coded size (sequential: ``plan.GopFrames``)."""

    def __init__(self, read: Callable, spans: Sequence, journal: Optional[Journal]):
        self.read, self.spans, self.journal = read, spans, journal
        self._next = 0          # the first GOP whose frames have not been read
        self._digests: Dict[int, bytes] = {}

    def __call__(self, span) -> np.ndarray:
        self._upto(span.index)
        if span.index < self._next:
            raise ValueError(f"GOP {span.index}'s frames were already read (GOPs are read in order)")
        frames = self.read(span)
        self._next = span.index + 1
        self._check(span.index, frames)
        return frames

    def _upto(self, g: int) -> None:
        while self._next < g:
            span = self.spans[self._next]
            self._next += 1
            self._check(span.index, self.read(span))

    def _check(self, g: int, frames: np.ndarray) -> None:
        digest = frames_digest(frames)
        entry = None if self.journal is None else self.journal.entries.get(g)
        if entry is None:
            self._digests[g] = digest
        elif entry.source != digest:
            raise JournalError(f"input frames of GOP {g} differ from those journalled in {entry.path} (the input "
                               f"changed since the interrupted encode); delete {entry.path} to start over")

    def finish(self) -> None:
        """Read (and check) the frames of every GOP no one asked for: the journalled ones at the end."""
        self._upto(len(self.spans))

    def digest(self, g: int) -> bytes:
        """The digest of GOP g's source frames (read by now), for its journal entry."""
        return self._digests.pop(g)
