"""The JSON text of a header as the SCP stores it: compact UTF-8 bytes.

orjson writes it about ten times faster than the standard library (a CT header: 15 µs
against 145 µs, a tenth of the SCP's CPU per instance before). The text means the
same to any JSON reader, with two choices of its own: a float is written in its
shortest exact form (``0.00001`` where ``json`` writes ``1e-05``), and a non-finite
number (an FD value that is NaN) is written ``null``, an empty value in DICOM JSON,
where ``json`` writes ``NaN``, which is not JSON. What orjson refuses (an integer
beyond 64 bits, from an IS value like "1e300") is written by ``json`` instead.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON in UTF-8 (raises ``UnicodeEncodeError`` for a string
    that is not Unicode text, a lone surrogate, as ``str.encode`` does)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
