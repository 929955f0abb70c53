"""Pure: DICOM DA/TM/DT/offset values -> FHIR date / dateTime, keeping the data's precision.

FHIR requires a timezone whenever a time is given. DICOM often has none; then
only the date is emitted rather than inventing a zone, unless the site configured
its time zone (``SCP2FHIR_SITE_TIMEZONE``): a zone passed as a ``tzinfo`` gives each
local date and time the offset in force then (summer time included). Every parser returns
``None`` for a value that is not a real date, time or offset, so callers can
leave the element out.
"""

from __future__ import annotations

import datetime as dt
import re

#: A zone to read local times in: a FHIR offset (``+01:00``) or a site time zone.
Zone = str | dt.tzinfo

# DA: YYYYMMDD; the ACR-NEMA form YYYY.MM.DD is still found in old files.
_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")
# DT: YYYY[MM[DD[HH[MM[SS[.F{1-6}]]]]]][&ZZXX]
_DT = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)


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


def fhir_time(tm: str | None) -> str | None:
    """``101530.12`` -> ``10:15:30.12``; ``None`` for anything that is not a real time."""
    if not tm:
        return None
    match = _TM.match(tm.strip().replace(":", ""))
    if not match:
        return None
    hh, mm, ss, frac = match.groups()
    return _clock(int(hh), int(mm or 0), int(ss or 0), frac)


def fhir_offset(offset: str | None) -> str | None:
    """``-0500`` -> ``-05:00``; ``None`` for anything that is not a UTC offset."""
    if not offset:
        return None
    match = _OFFSET.match(offset.strip())
    if not match:
        return None
    sign, hh, mm = match.groups()
    if int(hh) > 14 or int(mm) > 59:
        return None
    return f"{sign}{hh}:{mm}"


def combine(date: str | None, time: str | None, zone: Zone | None) -> str | None:
    """FHIR date, time and zone (an offset as returned above, or a time zone) -> FHIR
    dateTime: the date alone when time or zone is missing, or when the time zone makes
    the local time ambiguous or non-existent (the hours around a summer-time change)."""
    if date is None:
        return None
    if time is None or zone is None:
        return date
    if isinstance(zone, dt.tzinfo):
        offset = offset_at(date, time, zone)
        if offset is None:
            return date
        zone = offset
    return f"{date}T{time}{zone}"


def offset_at(date: str, time: str, zone: dt.tzinfo) -> str | None:
    """The UTC offset (``+02:00``) ``zone`` has at a local FHIR date and time; ``None``
    when that local time happens twice or never there (PEP 495: the two folds differ)."""
    local = dt.datetime.fromisoformat(f"{date}T{time[:8]}")
    first, second = zone.utcoffset(local.replace(fold=0)), zone.utcoffset(local.replace(fold=1))
    if first is None or first != second:
        return None
    minutes = int(first.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}"


def fhir_datetime(da: str | None, tm: str | None, offset: str | None) -> str | None:
    """Date, time and UTC offset -> FHIR dateTime; the date alone when time or zone is
    missing or invalid."""
    return combine(fhir_date(da), fhir_time(tm), fhir_offset(offset))


def fhir_dt(value: str | None, zone: Zone | None = None) -> str | None:
    """A DICOM DT value -> FHIR dateTime at the precision it has.

    The value's own offset wins over ``zone`` (a FHIR offset such as ``+01:00``, from
    Timezone Offset From UTC, or the site's time zone). Without any zone, only the date
    part is kept; a year or year-month stays as it is. ``None`` when the value is not a
    real date-time.
    """
    if not value:
        return None
    match = _DT.match(value.strip())
    if not match:
        return None
    year, month, day, hh, mm, ss, frac, own_zone = match.groups()
    if month is None:
        return year
    if not 1 <= int(month) <= 12:
        return None
    if day is None:
        return f"{year}-{month}"
    date = fhir_date(year + month + day)
    if date is None:
        return None
    if own_zone is not None:
        zone = fhir_offset(own_zone)
        if zone is None:
            return None
    if hh is None:
        return date
    clock = _clock(int(hh), int(mm or 0), int(ss or 0), frac)
    if clock is None:
        return None
    return combine(date, clock, zone)


def sort_key(value: str) -> tuple[str, str]:
    """Order FHIR dates/dateTimes by local date, then by instant (UTC) within a date."""
    date = value[:10]
    if len(value) <= 10:
        return (date, "")
    try:
        instant = dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    except ValueError:
        return (date, "")
    return (date, instant.strftime("%Y%m%d%H%M%S.%f"))


def _clock(hour: int, minute: int, second: int, frac: str | None) -> str | None:
    # DICOM allows a leap second (60); FHIR's time does not.
    if hour > 23 or minute > 59 or second > 59:
        return None
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    if frac:
        text += "." + frac
    return text
