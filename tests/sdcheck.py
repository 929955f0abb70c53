"""Read the guides scp2fhir writes for from their own StructureDefinitions in
``../shared/profiles`` (MII Bildgebung 2026.0.0 and 2027.0.0-ballot, Osiris 1.1.0), so the
tests take units, slice names, value types and cardinalities from the guide, never from a
copy typed by hand.

Conformance itself is judged by the HL7 validator (tests/test_conformance.py). This module
used to check extensions too (url, nesting, slice cardinality, value types, fixed Quantity
units, ext-1, the level of each extension): the validator checks all of that and more, and
where the two disagreed the validator was right, so those checks are gone. What is left is
what the validator cannot tell: the values the product must write come from the guide
(:func:`expected_quantity`, the slice trees), and a required Osiris slice the DICOM data
cannot fill is named, so the tests can check it is reported as a gap
(:func:`missing_osiris_slices`)."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

Json = dict[str, Any]

#: ../shared/profiles beside the clone (CI has it; README "Development").
PROFILES = Path(__file__).resolve().parent.parent.parent / "shared" / "profiles"
#: MII Bildgebung: the release (``SCP2FHIR_PROFILE=mii``) and the ballot (``mii-2027``).
MII_DIR = PROFILES / "mii-bildgebung-2026.0.0"
MII_BALLOT_DIR = PROFILES / "mii-bildgebung"
MII_DIRS = {"mii": MII_DIR, "mii-2027": MII_BALLOT_DIR}
MII_STUDY_SD = "StructureDefinition-mii-pr-bildgebung-bildgebungsstudie.json"
OSIRIS_DIR = PROFILES / "osiris-1.1.0"
#: ../shared/seeds: the documents the project was started from.
SEEDS = PROFILES.parent / "seeds"
#: The elements of ImagingStudy on which the MII profile slices ``extension``.
LEVELS = ("ImagingStudy", "ImagingStudy.series", "ImagingStudy.series.instance")


# --- shared -----------------------------------------------------------------------------


def value_key(type_code: str) -> str:
    """The JSON key of a value[x] of FHIR type ``type_code``: Quantity -> valueQuantity."""
    return "value" + type_code[:1].upper() + type_code[1:]


def _url(ext: Any) -> str:
    """An extension's url; a missing or non-text one as its repr, which matches no slice."""
    url = ext.get("url") if isinstance(ext, dict) else None
    return url if isinstance(url, str) else repr(url)


# --- MII Bildgebung ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExtDef:
    """An extension, or one sub-extension slice of a complex one, as its StructureDefinition's
    differential defines it."""

    url: str
    name: str  # slice name ("KVP"), or the StructureDefinition's id for a whole extension
    min: int = 0
    max: str = "*"
    types: tuple[str, ...] = ()  # value[x] type codes; empty leaves the type open
    value_min: int = 0
    value_max: str = "1"
    subs_min: int = 0
    subs_max: str = "*"
    patterns: dict[str, Any] = field(default_factory=dict)  # value[x].unit etc. -> fixed value
    subs: dict[str, ExtDef] = field(default_factory=dict)  # by url

    def sub(self, name: str) -> ExtDef:
        """The sub-extension slice called ``name``."""
        for sub in self.subs.values():
            if sub.name == name:
                return sub
        raise KeyError(f"{self.name} has no slice {name!r}; it has {sorted(self.subs)}")


@dataclass(frozen=True)
class Slot:
    """An extension slice the ImagingStudy profile declares on one level."""

    name: str
    min: int
    max: str
    url: str  # the extension's StructureDefinition


@dataclass(frozen=True)
class MiiProfiles:
    version: str
    study_url: str
    extensions: dict[str, ExtDef]  # by url
    slots: dict[str, dict[str, Slot]]  # level (see LEVELS) -> extension url -> slice

    def url_of(self, suffix: str) -> str:
        """The one extension url that is ``suffix`` or ends in "/suffix" or "-suffix"
        ("modalitaet-ct")."""
        tail = re.compile(f"(^|[/-]){re.escape(suffix)}$")
        found = [u for u in self.extensions if tail.search(u)]
        if len(found) != 1:
            raise KeyError(f"{suffix!r} names {len(found)} MII extensions: {found}")
        return found[0]

    def extension(self, suffix: str) -> ExtDef:
        return self.extensions[self.url_of(suffix)]


def _ext_def(by_id: dict[str, Json], prefix: str, url: str, name: str) -> ExtDef:
    """The extension (or slice) whose elements' ids start with ``prefix``."""
    own, value = by_id.get(prefix, {}), by_id.get(f"{prefix}.value[x]", {})
    subs = by_id.get(f"{prefix}.extension", {})
    head = re.escape(prefix)
    # value[x] may be sliced by type instead of typed (PT seriesType): the slices name types.
    typed = [value] + [e for i, e in by_id.items() if re.fullmatch(rf"{head}\.value\[x\]:[^.]+", i)]
    patterns: dict[str, Any] = {}
    slices: dict[str, ExtDef] = {}
    for element_id, element in by_id.items():
        if child := re.fullmatch(rf"{head}\.value\[x\]\.(\w+)", element_id):
            fixed = [v for k, v in element.items() if k.startswith(("pattern", "fixed"))]
            if fixed:
                patterns[str(child[1])] = fixed[0]
        elif sliced := re.fullmatch(rf"{head}\.extension:([^.]+)", element_id):
            slice_name = str(sliced[1])
            sub_url = str(by_id.get(f"{element_id}.url", {}).get("fixedUri", slice_name))
            slices[sub_url] = _ext_def(by_id, element_id, sub_url, slice_name)
    return ExtDef(
        url=url,
        name=name,
        min=own.get("min", 0),
        max=own.get("max", "*"),
        types=tuple(t["code"] for e in typed for t in e.get("type", [])),
        value_min=value.get("min", 0),
        value_max=value.get("max", "1"),
        subs_min=subs.get("min", 0),
        subs_max=subs.get("max", "*"),
        patterns=patterns,
        subs=slices,
    )


def _read(path: Path) -> Json:
    data: Json = json.loads(path.read_text(encoding="utf-8"))
    return data


def require(folder: Path) -> Path:
    """``folder``, or a failure saying what is missing (never a silent skip: CI has it)."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is missing: the profile tests read the guides of ../shared/profiles "
            "beside the clone (CI always has them)"
        )
    return folder


@cache
def load_mii(folder: Path = MII_DIR) -> MiiProfiles:
    """Every extension StructureDefinition in ``folder`` and the ImagingStudy profile's
    extension slices per level."""
    require(folder)
    extensions: dict[str, ExtDef] = {}
    for path in sorted(folder.glob("StructureDefinition-*.json")):
        sd = _read(path)
        if sd["type"] == "Extension":
            by_id = {e["id"]: e for e in sd["differential"]["element"]}
            extensions[sd["url"]] = _ext_def(by_id, "Extension", sd["url"], sd["id"])
    study = _read(folder / MII_STUDY_SD)
    slots: dict[str, dict[str, Slot]] = {level: {} for level in LEVELS}
    for e in study["differential"]["element"]:
        level = e["path"].removesuffix(".extension")
        if "sliceName" in e and e["path"].endswith(".extension") and level in slots:
            for profile in (p for t in e.get("type", []) for p in t.get("profile", [])):
                url = profile.split("|")[0]  # a canonical may carry "|version"
                slots[level][url] = Slot(e["sliceName"], e.get("min", 0), e.get("max", "*"), url)
    return MiiProfiles(study["version"], study["url"], extensions, slots)


def expected_quantity(
    extension: str, slice_name: str | None = None, folder: Path = MII_DIR
) -> dict[str, Any]:
    """What the MII profile fixes on the Quantity of ``extension`` (url or suffix such as
    "modalitaet-ct"), or of its sub-extension ``slice_name``:
    ``expected_quantity("modalitaet-ct", "KVP")`` -> unit, system and code."""
    d = load_mii(folder).extension(extension)
    return dict((d if slice_name is None else d.sub(slice_name)).patterns)


# --- Osiris -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OsirisSlice:
    """An extension slice of an Osiris StructureDefinition: its cardinality, the value
    types of a leaf, the sub-extension slices (by url) of a complex one."""

    name: str
    url: str
    min: int
    max: str
    types: tuple[str, ...] = ()
    subs: dict[str, OsirisSlice] = field(default_factory=dict)

    def sub(self, name: str) -> OsirisSlice:
        for sub in self.subs.values():
            if sub.name == name:
                return sub
        raise KeyError(f"{self.name} has no slice {name!r}; it has {sorted(self.subs)}")


@dataclass(frozen=True)
class OsirisProfile:
    url: str
    version: str
    #: Cardinality by element id of the ImagingStudy profile's snapshot:
    #: "ImagingStudy.description", "ImagingStudy.series.extension:imaging-settings", ...
    elements: dict[str, tuple[int, str]]
    #: The series extensions by slice name: "imaging-settings", "series-weightheigt".
    extensions: dict[str, OsirisSlice]


def _slices(by_id: dict[str, Json], prefix: str, name: str, url: str) -> OsirisSlice:
    """The slice whose elements' ids start with ``prefix`` ("Extension" for the whole)."""
    own = by_id.get(prefix, {})
    value = by_id.get(f"{prefix}.value[x]", {})
    types = () if value.get("max") == "0" else tuple(t["code"] for t in value.get("type", []))
    subs: dict[str, OsirisSlice] = {}
    head = re.escape(prefix)
    for element_id in by_id:
        if child := re.fullmatch(rf"{head}\.extension:([^.]+)", element_id):
            sub_url = str(by_id.get(f"{element_id}.url", {}).get("fixedUri", child[1]))
            subs[sub_url] = _slices(by_id, element_id, str(child[1]), sub_url)
    return OsirisSlice(name, url, own.get("min", 0), own.get("max", "*"), types, subs)


def _extension(path: Path) -> OsirisSlice:
    sd = _read(path)
    by_id = {e["id"]: e for e in sd["snapshot"]["element"]}
    return _slices(by_id, "Extension", sd["id"], sd["url"])


@cache
def load_osiris(folder: Path = OSIRIS_DIR) -> OsirisProfile:
    require(folder)
    study = _read(folder / "StructureDefinition-onco-imagingstudy.json")
    snapshot = study["snapshot"]["element"]
    elements = {e["id"]: (int(e.get("min", 0)), str(e.get("max", "*"))) for e in snapshot}
    extensions = {
        name: _extension(folder / f"StructureDefinition-{name}.json")
        for name in ("imaging-settings", "series-weightheigt")
    }
    return OsirisProfile(study["url"], study["version"], elements, extensions)


def osiris_settings_tree() -> dict[str, OsirisSlice]:
    """The Osiris series extensions by name ("imaging-settings", "series-weightheigt")."""
    return load_osiris().extensions


def _osiris_top(ext: Json) -> OsirisSlice | None:
    return next((s for s in osiris_settings_tree().values() if s.url == ext.get("url")), None)


def missing_osiris_slices(ext: Json) -> list[str]:
    """The required (min >= 1) slices of ``ext`` that carry no value (absent, or only a
    data-absent-reason), as paths such as "imaging-settings.mr_image.flip_angle"; only under
    complex extensions that are present."""
    top = _osiris_top(ext)
    return [] if top is None else _missing(ext, top, top.name)


def _has_value(ext: Json) -> bool:
    return bool(ext.get("extension")) or any(k.startswith("value") for k in ext)


def _missing(ext: Json, s: OsirisSlice, where: str) -> list[str]:
    subs = [sub for sub in ext.get("extension", []) if isinstance(sub, dict)]
    present = Counter(_url(sub) for sub in subs if _has_value(sub))
    missing = [f"{where}.{url}" for url, d in s.subs.items() if present[url] < d.min]
    for sub in subs:
        if (d := s.subs.get(_url(sub))) is not None and d.subs:
            missing += _missing(sub, d, f"{where}.{d.url}")
    return missing


def seed_osiris_page() -> tuple[str, str]:
    """``(url, version)`` the Osiris profile page among the seeds states."""
    for path in sorted(require(SEEDS).glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        if "Resource Profile: Imaging Study" in text:
            found = re.search(r"Official URL: (\S+) Version: (\S+)", text)
            if found:
                return found[1], found[2]
    raise FileNotFoundError(f"no Osiris ImagingStudy page among {SEEDS}")
