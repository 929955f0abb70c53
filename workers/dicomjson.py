"""Reading values out of a DICOM JSON (PS3.18 Annex F) header by keyword.

This is the one place on the worker side where DICOM keywords appear: callers
ask for ``StudyInstanceUID`` and get a plain Python value back.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydicom.datadict import tag_for_keyword


@lru_cache(maxsize=512)
def _key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"unknown DICOM keyword {keyword}")
    return f"{tag:08X}"


class DicomJson:
    """Read-only view over one DICOM JSON dataset."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def values(self, keyword: str) -> list[Any]:
        element = self._data.get(_key(keyword))
        if not isinstance(element, dict):
            return []
        value = element.get("Value")
        return value if isinstance(value, list) else []

    def first(self, keyword: str) -> Any:
        values = self.values(keyword)
        return values[0] if values else None

    def text(self, keyword: str) -> str | None:
        """First value as stripped text; ``None`` when absent or empty."""
        value = self.first(keyword)
        if value is None:
            return None
        if isinstance(value, dict):  # a person name
            value = value.get("Alphabetic")
            if value is None:
                return None
        text = str(value).strip()
        return text or None

    def integer(self, keyword: str) -> int | None:
        value = self.first(keyword)
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return None
        return None

    def items(self, keyword: str) -> list[DicomJson]:
        return [DicomJson(item) for item in self.values(keyword) if isinstance(item, dict)]
