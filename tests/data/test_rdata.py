"""harness.data.rdata: R's XDR serialization (strings in UTF-8 and Latin-1, integers, logicals, named lists, gzip) and
lazy-load databases, against a tiny R serializer written here; what it cannot read is refused by name."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from harness.data.rdata import RFormatError, read_lazyload, unserialize

# ---------------------------------------------------------------- a tiny R serializer (XDR, version 3)

HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10
NA_INT = -(2**31)


def _ints(*values: int) -> bytes:
    return struct.pack(f">{len(values)}i", *values)


def _charsxp(s: str | None, latin1: bool = False) -> bytes:
    if s is None:
        return _ints(9, -1)
    raw = s.encode("latin-1" if latin1 else "utf-8")
    levels = 1 << 2 if latin1 else 1 << 3  # R's LATIN1_MASK / UTF8_MASK
    return _ints(9 | levels << 12, len(raw)) + raw


def _strsxp(strings: list, latin1: bool = False, attr: bytes = b"") -> bytes:
    body = b"".join(_charsxp(s, latin1) for s in strings)
    return _ints(16 | (HAS_ATTR if attr else 0), len(strings)) + body + attr


def _names(names: list[str], first_use: bool) -> bytes:
    # a pairlist cell tagged with the symbol `names`: the symbol itself the first time, a reference after
    symbol = _ints(1) + _charsxp("names") if first_use else _ints(255 | 1 << 8)
    return _ints(2 | HAS_TAG) + symbol + _strsxp(names) + _ints(254)


def _serialize(body: bytes) -> bytes:
    return b"X\n" + _ints(3, 0x040201, 0x030500, 5) + b"UTF-8" + body


def test_unserialize_strings_ints_logicals_and_named_lists():
    strings = ["It is a truth", "", None, "naïve café — “quoted”"]
    assert unserialize(_serialize(_strsxp(strings))) == strings
    assert unserialize(_serialize(_strsxp(["señor"], latin1=True))) == ["señor"]
    ints = [0, -7, NA_INT, 2**31 - 1]
    assert unserialize(_serialize(_ints(13, len(ints), *ints))) == [0, -7, None, 2**31 - 1]
    assert unserialize(_serialize(_ints(10, 3, 1, 0, NA_INT))) == [True, False, None]
    # list(a = c("x", "y"), b = list(c = "z")): attributes follow the data, so the inner list's `names`
    # symbol comes first and the outer one is a reference to it
    inner = _ints(19 | HAS_ATTR, 1) + _strsxp(["z"]) + _names(["c"], first_use=True)
    outer = _ints(19 | HAS_ATTR, 2) + _strsxp(["x", "y"]) + inner + _names(["a", "b"], first_use=False)
    assert unserialize(_serialize(outer)) == {"a": ["x", "y"], "b": {"c": ["z"]}}
    assert unserialize(gzip.compress(_serialize(_strsxp(["gz"])))) == ["gz"]  # .rds/.rdx files are gzip


def test_unserialize_rejects_what_it_cannot_read():
    with pytest.raises(RFormatError, match="XDR"):
        unserialize(b"A\n" + _ints(3))  # R's ASCII format
    with pytest.raises(RFormatError, match="type 3"):
        unserialize(_serialize(_ints(3)))  # a closure
    with pytest.raises(RFormatError, match=r"reference 1 .*\(0 symbols"):
        unserialize(_serialize(_ints(19 | HAS_ATTR, 0) + _names([], first_use=False)))
    with pytest.raises(RFormatError, match="truncated"):
        unserialize(_serialize(_ints(13, 5, 1)))


def test_read_lazyload_follows_the_index(tmp_path):
    books = {"first": ["Chapter 1", "Once upon a time"], "second": ["The end", None]}
    rdb, variables = b"", []
    for values in books.values():
        payload = _serialize(_strsxp(values))
        chunk = struct.pack(">I", len(payload)) + zlib.compress(payload)  # R_compress1
        variables.append((len(rdb), len(chunk)))
        rdb += chunk
    offsets = b"".join(_ints(13, 2, *v) for v in variables)
    index = (
        _ints(19 | HAS_ATTR, 3)
        + _ints(19 | HAS_ATTR, len(books)) + offsets + _names(list(books), first_use=True)  # variables
        + _ints(19 | HAS_ATTR, 0) + _names([], first_use=False)  # references
        + _ints(10, 1, 1)  # compressed = TRUE
        + _names(["variables", "references", "compressed"], first_use=False)
    )  # fmt: skip
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(_serialize(index)))
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    assert read_lazyload(tmp_path / "Rdata") == books
