"""Read R's serialization format and lazy-load databases (`.rdx` + `.rdb`): enough for R data packages.

An installed R package keeps its data sets in a lazy-load database. `Rdata.rdx` is a gzip file holding one
serialized list: `variables` maps each object's name to an (offset, length) slice of `Rdata.rdb`, and
`compressed` says how each slice is compressed (TRUE: a 4-byte big-endian uncompressed length, then a zlib
stream; 2 or 3: the same length, a type byte, then bzip2 / xz / zlib / raw). A decompressed slice is one
object in R's XDR serialization (big-endian; the layout is R's src/main/serialize.c).

We read it ourselves rather than depend on PyPI's `rdata`, which parses `.rda`/`.rds` files but not
lazy-load databases, and because the subset that data packages use is small: NULL, symbols, pairlists
(attributes), character, logical, integer and double vectors, lists, and references to symbols. Anything
else raises naming the R type code.

R values become Python values: NULL -> None, atomic vectors and lists -> list (NA -> None; a double NA
stays a NaN), and any vector with a `names` attribute -> dict(name -> element). Other attributes are dropped.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

# SEXP type codes (R's Rinternals.h) and the serialization-only pseudo types (serialize.c)
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10
_LATIN1 = 1 << 2  # CHARSXP encoding bit in the `levels` field; everything else we read as UTF-8
_NA_INT = -(2**31)


class RFormatError(ValueError):
    """Bytes that are not (the supported subset of) R's XDR serialization."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.refs: list[Any] = []  # symbols, in the order they appear; REFSXP indexes this (1-based)

    def ints(self, n: int) -> tuple[int, ...]:
        if self.pos + 4 * n > len(self.buf):
            raise RFormatError(f"truncated R serialization: need {4 * n} bytes at offset {self.pos}")
        out = struct.unpack_from(f">{n}i", self.buf, self.pos)
        self.pos += 4 * n
        return out

    def int(self) -> int:
        return self.ints(1)[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # a long vector: the length follows as two 32-bit halves
            hi, lo = self.ints(2)
            n = (hi << 32) | (lo & 0xFFFFFFFF)
        return n

    def header(self) -> None:
        if bytes(self.buf[:2]) != b"X\n":
            raise RFormatError(
                f"not R's XDR serialization (starts {bytes(self.buf[:2])!r}, expected b'X\\n')"
            )
        self.pos = 2
        version, _writer, _min_reader = self.ints(3)
        if version == 3:
            self.pos += 4 + self.int()  # the writer's native encoding name; strings carry their own flags
        elif version != 2:
            raise RFormatError(f"unsupported R serialization version {version} (supported: 2, 3)")

    def item(self, flags: int | None = None) -> Any:
        flags = self.int() if flags is None else flags
        kind = flags & 0xFF
        if kind in (NILVALUE_SXP, NILSXP):
            return None
        if kind == REFSXP:
            index = (flags >> 8) or self.int()
            if not 1 <= index <= len(self.refs):
                raise RFormatError(
                    f"reference {index} to an unread object ({len(self.refs)} symbols read so far)"
                )
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()  # a CHARSXP
            self.refs.append(name)
            return name
        if kind == LISTSXP:
            return self.pairlist(flags)
        if kind == CHARSXP:
            return self.charsxp(flags)
        if kind in (LGLSXP, INTSXP):
            values = [None if v == _NA_INT else v for v in self.ints(self.length())]
            value: Any = [None if v is None else bool(v) for v in values] if kind == LGLSXP else values
        elif kind == REALSXP:
            n = self.length()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        elif kind == STRSXP or kind == VECSXP:
            value = [self.item() for _ in range(self.length())]
        else:
            raise RFormatError(f"unsupported R object type {kind} at offset {self.pos - 4}")
        attributes = self.item() if flags & _HAS_ATTR else None  # vectors: attributes follow the data
        if attributes and attributes.get("names") is not None:
            return dict(zip(attributes["names"], value))
        return value

    def charsxp(self, flags: int) -> str | None:
        n = self.int()
        if n == -1:
            return None  # NA_character_
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("latin-1" if (flags >> 12) & _LATIN1 else "utf-8")

    def pairlist(self, flags: int) -> dict[Any, Any]:
        # Iterative rather than recursive on the CDR: pairlists can be long. Cells: [attr] [tag] CAR CDR.
        out: dict[Any, Any] = {}
        while True:
            if flags & _HAS_ATTR:
                self.item()
            tag = self.item() if flags & _HAS_TAG else len(out)
            out[tag] = self.item()
            flags = self.int()
            if flags & 0xFF != LISTSXP:
                if self.item(flags) is not None:
                    raise RFormatError("a pairlist ends in something other than NULL")
                return out


def unserialize(data: bytes) -> Any:
    """One R object from its XDR serialization (as `saveRDS`/`serialize` write it; gzip is detected)."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress(chunk: bytes, compressed: Any) -> bytes:
    """One `.rdb` slice -> serialized bytes, following R's R_decompress1/2/3."""
    size = struct.unpack_from(">I", chunk)[0]
    if compressed in (True, 1):
        out = zlib.decompress(chunk[4:])
    else:
        kind, body = chunk[4:5], chunk[5:]
        decoders = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
        if kind not in decoders:
            raise RFormatError(f"unknown .rdb compression type {kind!r} (compressed={compressed!r})")
        out = decoders[kind](body)
    if len(out) != size:
        raise RFormatError(f".rdb slice decompressed to {len(out)} bytes, its header says {size}")
    return out


def read_lazyload(filebase: str | Path) -> dict[str, Any]:
    """Every object of the lazy-load database `filebase.rdx` + `filebase.rdb`, by name."""
    filebase = Path(filebase)
    index = unserialize(filebase.with_suffix(".rdx").read_bytes())
    if not isinstance(index, dict) or not isinstance(index.get("variables"), dict):
        raise RFormatError(f"{filebase}.rdx is not a lazy-load index (no `variables` list)")
    compressed = (index.get("compressed") or [True])[0]
    blob = filebase.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        data = (
            blob[offset : offset + length]
            if not compressed
            else _decompress(blob[offset : offset + length], compressed)
        )
        out[name] = unserialize(data)
    return out
