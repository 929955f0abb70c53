"""Inflating a Deflated Explicit VR Little Endian dataset (PS3.5 A.5), a piece at a time.

A deflated dataset can inflate a thousandfold: 2 MB on the wire, 2 GB in memory.
Both pydicom and a plain ``zlib.decompress`` inflate it whole; here at most ``limit``
bytes are produced, in steps of :data:`STEP`, and the rest is never inflated: the
header is everything before the pixel data, so a ``limit`` of a few times the header
budget finds it in any honest dataset (:func:`scp.header.read_header` judges whether
it did).
"""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO

#: Bytes inflated (and deflated bytes read) per step.
STEP = 1024 * 1024


class Corrupt(ValueError):
    """The deflated data is not a valid deflate stream."""


def inflate(deflated: bytes | memoryview, sink: BinaryIO, limit: int) -> bool:
    """Write the inflated data, at most ``limit`` bytes of it, to ``sink``; whether some
    was left over (not inflated)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    view = memoryview(deflated)
    offset = 0
    written = 0
    pending: bytes | memoryview = b""
    try:
        while not inflater.eof:
            if pending:
                # One byte more than the room left tells whether anything is left over.
                out = inflater.decompress(pending, min(STEP, limit - written + 1))
                pending = inflater.unconsumed_tail
            elif offset < len(view):
                pending = view[offset : offset + STEP]
                offset += STEP
                continue
            else:  # all input read: what zlib still holds (at most its window), and done
                out = inflater.flush()
                if not out:
                    break
            if written + len(out) > limit:
                sink.write(out[: limit - written])
                return True
            sink.write(out)
            written += len(out)
    except zlib.error as exc:
        raise Corrupt(str(exc)) from None
    return False


def inflate_bytes(deflated: bytes | memoryview, limit: int) -> tuple[bytes, bool]:
    """:func:`inflate` into memory: (the inflated bytes, whether some was left over)."""
    sink = io.BytesIO()
    cut = inflate(deflated, sink, limit)
    return sink.getvalue(), cut
