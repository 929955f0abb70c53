"""The modality as a Device: the equipment that made a series (General Equipment module)."""

from __future__ import annotations

from typing import Any

from workers.mapping.common import Resource, stable_id
from workers.mapping.options import FhirVersion
from workers.terminology import modality_coding

#: manufacturer, model, station name, serial number ("" where unknown)
DeviceKey = tuple[str, str, str, str]


def device_key(series: dict[str, Any]) -> DeviceKey | None:
    parts = tuple(
        value if isinstance(value := series.get(name), str) else ""
        for name in ("manufacturer", "model", "station", "serial_number")
    )
    return parts if any(parts) else None  # type: ignore[return-value]


def device_display(key: DeviceKey) -> str:
    manufacturer, model, station, serial = key
    text = " ".join(part for part in (manufacturer, model) if part)
    if station:
        text = f"{text} ({station})" if text else station
    if serial:
        text = f"{text}, serial number {serial}" if text else f"serial number {serial}"
    return text


def device_id(key: DeviceKey) -> str:
    return stable_id("dev", *key)


def device_resource(
    key: DeviceKey, series: dict[str, Any], modalities: list[str], version: FhirVersion
) -> Resource:
    """A Device for the equipment; its id depends only on the equipment, so every study
    made with it refers to the same Device."""
    manufacturer, model, station, serial = key
    device: Resource = {"resourceType": "Device", "id": device_id(key)}
    if manufacturer:
        device["manufacturer"] = manufacturer
    names = []
    if model:
        names.append((model, "model-name" if version == "R4" else "registered-name"))
    if station:
        names.append((station, "user-friendly-name"))
    if names:
        field, value_key = ("deviceName", "name") if version == "R4" else ("name", "value")
        device[field] = [{value_key: value, "type": kind} for value, kind in names]
    if serial:
        device["serialNumber"] = serial
    codings = [c for m in modalities if (c := modality_coding(m)) is not None]
    if codings:
        device["type"] = (
            {"coding": codings[:1]} if version == "R4" else [{"coding": [c]} for c in codings]
        )
    software = series.get("software_versions")
    if isinstance(software, str) and software:
        device["version"] = [{"value": software}]
    return device
