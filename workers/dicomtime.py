"""Pure: DICOM DA/TM/offset values -> FHIR date / dateTime, keeping the data's precision.

FHIR requires a timezone whenever a time is given. DICOM often has none; then
only the date is emitted rather than inventing a zone.
"""

from __future__ import annotations

import datetime as dt
import re

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def fhir_date(da: str | None) -> str | None:
    """``20240131`` -> ``2024-01-31``; ``None`` for anything that is not a real date."""
    if not da:
        return None
    match = _DA.match(da.strip())
    if not match:
        return None
    year, month, day = (int(part) for part in match.groups())
    try:
        dt.date(year, month, day)
    except ValueError:
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def fhir_datetime(da: str | None, tm: str | None, offset: str | None) -> str | None:
    """Date, time and UTC offset -> FHIR dateTime; the date alone when time or zone is
    missing or invalid."""
    date = fhir_date(da)
    if date is None:
        return None
    time = _fhir_time(tm)
    zone = _fhir_offset(offset)
    if time is None or zone is None:
        return date
    return f"{date}T{time}{zone}"


def _fhir_time(tm: str | None) -> str | None:
    if not tm:
        return None
    match = _TM.match(tm.strip().replace(":", ""))
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    hour, minute, second = int(hh), int(mm or 0), int(ss or 0)
    # DICOM allows a leap second (60); FHIR's time does not.
    if hour > 23 or minute > 59 or second > 59:
        return None
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if frac:
        text += "." + frac
    return text


def _fhir_offset(offset: str | None) -> str | None:
    if not offset:
        return None
    match = _OFFSET.match(offset.strip())
    if not match:
        return None
    sign, hh, mm = match.groups()
    if int(hh) > 14 or int(mm) > 59:
        return None
    return f"{sign}{hh}:{mm}"
