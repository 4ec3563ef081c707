"""Bit-level I/O of the .gvc format: ``BitstreamError``, MSB-first bit writer / reader, LEB128
varints and a bounds-checked byte cursor. Pure Python (no numpy, no jax), imported by everything
that reads stream bytes (``bitstream``, ``ranks``, ``residual``, ``anchors``)."""
from __future__ import annotations

from typing import Iterable

VARINT_MAX_BYTES = 10    # values < 2**70; anything longer is malformed


class BitstreamError(ValueError):
    """A malformed, truncated or corrupted .gvc stream (or payload inside one)."""


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit = more."""
    n = int(n)
    if n < 0:
        raise ValueError(f"varint must be >= 0, got {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class Cursor:
    """Bounds-checked byte reader over a bytes object; every read names what it was reading."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left:
            raise BitstreamError(f"truncated stream: {what} needs {n} bytes, {self.left} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value, shift = 0, 0
        for i in range(VARINT_MAX_BYTES):
            if self.pos >= self.end:
                raise BitstreamError(f"truncated stream: varint {what} runs past the end")
            b = self.data[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise BitstreamError(f"non-canonical varint for {what}")
                return value
        raise BitstreamError(f"varint {what} longer than {VARINT_MAX_BYTES} bytes")


class BitWriter:
    """Accumulates bits MSB first; ``getvalue()`` zero-pads the last byte."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._acc = 0  # pending bits (fewer than 8 between calls)
        self._acc_bits = 0
        self.bit_length = 0

    def write(self, value: int, nbits: int) -> None:
        """Append ``value`` as an unsigned ``nbits``-bit integer, most significant bit first."""
        value, nbits = int(value), int(nbits)
        if nbits < 0:
            raise ValueError(f"nbits must be >= 0, got {nbits}")
        if value < 0 or value.bit_length() > nbits:
            raise ValueError(f"value {value} does not fit in {nbits} unsigned bits")
        if nbits == 0:
            return
        acc = (self._acc << nbits) | value
        acc_bits = self._acc_bits + nbits
        nbytes = acc_bits // 8
        if nbytes:
            rest = acc_bits - 8 * nbytes
            self._out += (acc >> rest).to_bytes(nbytes, "big")
            acc &= (1 << rest) - 1
            acc_bits = rest
        self._acc, self._acc_bits = acc, acc_bits
        self.bit_length += nbits

    def write_bits(self, bits: Iterable[int]) -> None:
        """Append single bits (each 0 or 1), first element first."""
        value, n = 0, 0
        for b in bits:
            b = int(b)
            if b not in (0, 1):
                raise ValueError(f"bits must be 0 or 1, got {b}")
            value = (value << 1) | b
            n += 1
        self.write(value, n)

    def getvalue(self) -> bytes:
        """All bits written so far, zero-padded to a whole byte."""
        if self._acc_bits:
            return bytes(self._out) + bytes([(self._acc << (8 - self._acc_bits)) & 0xFF])
        return bytes(self._out)


class BitReader:
    """Reads MSB-first bits from bytes; reading past the end raises ``BitstreamError``."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0  # bit position
        self._nbits = 8 * len(self._data)

    @property
    def bits_left(self) -> int:
        return self._nbits - self._pos

    @property
    def position(self) -> int:
        """Bits read so far."""
        return self._pos

    def read(self, nbits: int) -> int:
        """Next ``nbits`` bits as an unsigned int (0 when nbits == 0)."""
        nbits = int(nbits)
        if nbits < 0:
            raise ValueError(f"nbits must be >= 0, got {nbits}")
        if nbits > self.bits_left:
            raise BitstreamError(f"truncated bit payload: need {nbits} bits, {self.bits_left} left")
        if nbits == 0:
            return 0
        start, end = self._pos, self._pos + nbits
        b0, b1 = start // 8, (end + 7) // 8
        chunk = int.from_bytes(self._data[b0:b1], "big")
        chunk >>= 8 * b1 - end
        self._pos = end
        return chunk & ((1 << nbits) - 1)
