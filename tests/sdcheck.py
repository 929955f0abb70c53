"""Check produced FHIR extensions against the profiles scp2fhir writes for, with every rule
read from the profiles' own text: the MII Bildgebung StructureDefinitions (JSON, vendored in
``tests/data/mii-bildgebung``) and the Osiris ImagingStudy page (``tests/data/osiris``).
Nothing is copied by hand, so a new ballot is a file swap and a typo in the product cannot be
mirrored by the same typo here. Non-conformance comes back as readable problem strings (empty
list = conforms), never as an exception, so one test can show every problem at once."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DATA = Path(__file__).parent / "data"
MII_DIR = DATA / "mii-bildgebung"
MII_STUDY_SD = "StructureDefinition-mii-pr-bildgebung-bildgebungsstudie.json"
OSIRIS_PAGE = DATA / "osiris" / "onco-imagingstudy.txt"
#: The elements of ImagingStudy on which the MII profile slices ``extension``.
LEVELS = ("ImagingStudy", "ImagingStudy.series", "ImagingStudy.series.instance")
#: JSON shapes of the primitive value[x] choices; every other choice is a JSON object.
_TEXT = {"String", "Code", "Id", "Uri", "Url", "Canonical", "Oid", "Uuid", "Markdown"}
_TEXT |= {"Base64Binary", "Date", "DateTime", "Instant", "Time"}
_INTEGERS = {"Integer", "UnsignedInt", "PositiveInt", "Integer64"}
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


# --- shared -----------------------------------------------------------------------------


def value_key(type_code: str) -> str:
    """The JSON key of a value[x] of FHIR type ``type_code``: Quantity -> valueQuantity."""
    return "value" + type_code[:1].upper() + type_code[1:]


def _cardinality(where: str, what: str, n: int, low: int, high: str) -> list[str]:
    if n < low:
        return [f"{where}: {n} {what}, the profile requires at least {low}"]
    if high != "*" and n > int(high):
        return [f"{where}: {n} {what}, the profile allows at most {high}"]
    return []


def _shape(where: str, key: str, value: Any) -> list[str]:
    """A value whose JSON type does not fit its key (valueInteger "120", valueString 5)."""
    kind = key.removeprefix("value")
    if kind == "Boolean":
        fits = isinstance(value, bool)
    elif kind in _INTEGERS:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "Decimal":
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind in _TEXT:
        fits = isinstance(value, str) and (kind != "Id" or bool(_FHIR_ID.fullmatch(value)))
    else:
        fits = isinstance(value, dict)
    if fits and kind == "Quantity" and "value" in value:
        number = value["value"]
        fits = isinstance(number, int | float) and not isinstance(number, bool)
    return [] if fits else [f"{where}: {value!r} is not a valid {kind}"]


def _values(ext: Json) -> list[str]:
    return [key for key in ext if key.startswith("value")]


def _either(where: str, subs: list[Any], values: list[str]) -> list[str]:
    """FHIR's ext-1: an extension has a value or sub-extensions, never both, never none."""
    if bool(subs) != bool(values):
        return []
    return [f"{where}: has {'both a value and' if subs else 'neither a value nor'} sub-extensions"]


def _url(ext: Any) -> str:
    """An extension's url; a missing or non-text one as its repr, which matches no slice."""
    url = ext.get("url") if isinstance(ext, dict) else None
    return url if isinstance(url, str) else repr(url)


def _urls(extensions: list[Any]) -> list[str]:
    return [_url(ext) for ext in extensions]


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


@cache
def load_mii(folder: Path = MII_DIR) -> MiiProfiles:
    """Every extension StructureDefinition in ``folder`` and the ImagingStudy profile's
    extension slices per level."""
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


def _short(url: Any) -> str:
    return str(url).rsplit("/", 1)[-1]


def _mii_problems(ext: Any, d: ExtDef, where: str, require_ucum: bool) -> list[str]:
    if not isinstance(ext, dict):
        return [f"{where}: {ext!r} is not an extension object"]
    problems = []
    if ext.get("url") != d.url:
        problems.append(f"{where}: url {ext.get('url')!r}, the profile says {d.url!r}")
    subs, values = ext.get("extension", []), _values(ext)
    problems += _either(where, subs, values)
    problems += _cardinality(where, "sub-extensions", len(subs), d.subs_min, d.subs_max)
    problems += _cardinality(where, "value[x]", len(values), d.value_min, d.value_max)
    if subs and d.subs_max != "0":
        counts = Counter(_urls(subs))
        problems += [
            f"{where}: sub-extension url {url!r} is none of the slices {sorted(d.subs)}"
            for url in counts
            if url not in d.subs
        ]
        for url, sub in d.subs.items():
            here = f"{where}.extension:{sub.name}"
            problems += _cardinality(here, "occurrences", counts[url], sub.min, sub.max)
        for sub_ext in subs:
            if (sub_def := d.subs.get(_url(sub_ext))) is not None:
                problems += _mii_problems(
                    sub_ext, sub_def, f"{where}.extension:{sub_def.name}", require_ucum
                )
    for key in values:
        problems += _mii_value(f"{where}.{key}", key, ext[key], d, require_ucum)
    return problems


def _mii_value(where: str, key: str, value: Any, d: ExtDef, require_ucum: bool) -> list[str]:
    allowed = sorted({value_key(t) for t in d.types})
    if allowed and key not in allowed:
        return [f"{where}: the profile wants {' or '.join(allowed)}"]
    if problems := _shape(where, key, value):
        return problems
    if not isinstance(value, dict):
        return []
    problems = [
        f"{where}.{name}: {value[name]!r}, the profile fixes {fixed!r}"
        for name, fixed in d.patterns.items()
        if name in value and value[name] != fixed
    ]
    if require_ucum and key == "valueQuantity":
        problems += [
            f"{where}: no {name} (scp2fhir always writes UCUM system, code and unit)"
            for name in ("system", "code")
            if name not in value
        ]
    return problems


def problems_in_extension(ext: Json, sd_url: str, *, require_ucum: bool = True) -> list[str]:
    """What keeps ``ext`` from conforming to the MII extension ``sd_url`` (url, slices, their
    cardinality, value types, fixed Quantity unit/system/code). ``require_ucum`` also
    demands system and code on every Quantity, as scp2fhir always writes them."""
    definition = load_mii().extensions.get(sd_url)
    if definition is None:
        return [f"no vendored StructureDefinition {sd_url}"]
    return _mii_problems(ext, definition, _short(sd_url), require_ucum)


def problems_in_study(
    study: Json, *, require_ucum: bool = True, open_slicing: bool = False
) -> list[str]:
    """What keeps ``study`` from conforming to the MII ImagingStudy profile's extensions:
    meta.profile, each extension's level, its slice's cardinality, and the extension itself.
    The profile's slicing is open, so FHIR would accept foreign extensions; scp2fhir writes
    none, hence unknown urls count as problems unless ``open_slicing``. An MII extension on
    the wrong level is always a problem."""
    mii = load_mii()
    problems = []
    if study.get("resourceType") != "ImagingStudy":
        problems.append(f"resourceType {study.get('resourceType')!r}, not ImagingStudy")
    if mii.study_url not in study.get("meta", {}).get("profile", []):
        problems.append(f"meta.profile lacks {mii.study_url}")
    places = [("ImagingStudy", "ImagingStudy", study)]
    for i, series in enumerate(study.get("series", [])):
        places.append(("ImagingStudy.series", f"ImagingStudy.series[{i}]", series))
        for j, instance in enumerate(series.get("instance", [])):
            places.append(
                (
                    "ImagingStudy.series.instance",
                    f"ImagingStudy.series[{i}].instance[{j}]",
                    instance,
                )
            )
    for level, where, element in places:
        problems += _level_problems(mii, level, where, element, require_ucum, open_slicing)
    return problems


def _level_problems(
    mii: MiiProfiles, level: str, where: str, element: Json, require_ucum: bool, open_: bool
) -> list[str]:
    slots, extensions = mii.slots[level], element.get("extension", [])
    problems = []
    for k, (url, ext) in enumerate(zip(_urls(extensions), extensions, strict=True)):
        here = f"{where}.extension[{k}]"
        if url in slots:
            d = mii.extensions.get(url)
            if d is None:
                problems.append(f"{here}: no vendored StructureDefinition {url}")
            else:
                problems += _mii_problems(ext, d, f"{here}({slots[url].name})", require_ucum)
        elif home := [other for other in LEVELS if url in mii.slots[other]]:
            problems.append(f"{here}: {_short(url)} belongs on {home[0]}, not on {level}")
        elif not open_:
            allowed = sorted(_short(u) for u in slots)
            problems.append(
                f"{here}: {url!r} is no extension the profile allows on {level}: {allowed}"
            )
    counts = Counter(_urls(extensions))
    for url, slot in slots.items():
        here = f"{where}.extension:{slot.name}"
        problems += _cardinality(here, "occurrences", counts[url], slot.min, slot.max)
    return problems


def expected_quantity(extension: str, slice_name: str | None = None) -> dict[str, Any]:
    """What the MII profile fixes on the Quantity of ``extension`` (url or suffix such as
    "modalitaet-ct"), or of its sub-extension ``slice_name``:
    ``expected_quantity("modalitaet-ct", "KVP")`` -> unit, system and code."""
    d = load_mii().extension(extension)
    return dict((d if slice_name is None else d.sub(slice_name)).patterns)


# --- Osiris -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OsirisSlice:
    """An extension slice of the Osiris page: its cardinality, the value types of a leaf,
    the sub-extension slices (by url) of a complex one."""

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
    #: Cardinality by element path: "ImagingStudy.description", "ImagingStudy.series.uid",
    #: "ImagingStudy.series.extension:imaging-settings.extension:rows.value[x]", ...
    elements: dict[str, tuple[int, str]]
    #: The top-level extension slices by name: "imaging-settings", "series-weightheigt".
    extensions: dict[str, OsirisSlice]


@dataclass
class _Row:
    depth: int
    name: str
    card: tuple[int, str] | None
    type: str
    rest: str
    url: str | None = None
    children: list[_Row] = field(default_factory=list)


#: A table row: dots for depth, name, flags (S, Σ, ?!, ...), card., then type and description.
_ROW = re.compile(
    r"(?P<dots>\.{2,}) (?P<name>Slices for \S+|\S+)(?: [SΣ?!CIND]+(?= ))?"
    r"(?: (?P<min>\d+)\.\.(?P<max>\d+|\*))?(?: (?P<rest>.*))?"
)


def _table(text: str) -> list[str]:
    """The lines of the page's first profile table."""
    lines = text.splitlines()
    start = lines.index("Formal Views of Profile Content")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("doco Documentation"))
    return lines[start + 1 : end]


def _rows(lines: list[str]) -> _Row:
    root = _Row(0, "", None, "", "")
    stack = [root]
    for line in lines:
        if line.startswith("URL: ") and stack[-1] is not root:
            stack[-1].url = line.removeprefix("URL: ").strip()
        if not (m := _ROW.fullmatch(line.rstrip())):
            continue
        rest = m["rest"] or ""
        card = (int(m["min"]), m["max"]) if m["min"] else None
        row = _Row(len(m["dots"]), m["name"], card, re.split(r"[\s(]", rest)[0], rest)
        while stack[-1].depth >= row.depth:
            stack.pop()
        stack[-1].children.append(row)
        stack.append(row)
    return root


def _walk(row: _Row, path: str, elements: dict[str, tuple[int, str]]) -> None:
    for child in row.children:
        # "Slices for extension" is the sliced element; its slices are named "extension:x".
        name = child.name.removeprefix("Slices for ")
        base = path.rsplit(".", 1)[0] if row.name.startswith("Slices for ") else path
        here = f"{base}.{name}" if base else name
        if child.card:
            elements[here] = child.card
        _walk(child, here, elements)


def _slice(row: _Row) -> OsirisSlice:
    name = row.name.removeprefix("extension:")
    parts = row.children + [
        g for c in row.children if c.name.startswith("Slices") for g in c.children
    ]
    fixed = [re.search(r'"([^"]*)"', c.rest) for c in parts if c.name == "url"]
    url = row.url or next((f[1] for f in fixed if f), name)
    types: list[str] = []
    for c in parts:
        if c.name == "value[x]" and c.type:
            types.append(c.type)
        elif c.name == "Slices for value[x]":  # open by type: every listed choice goes
            types += [g.type for g in c.children]
    subs = [_slice(c) for c in parts if c.name.startswith("extension:")]
    low, high = row.card or (0, "*")
    return OsirisSlice(name, url, low, high, tuple(dict.fromkeys(types)), {s.url: s for s in subs})


def _top_slices(row: _Row, found: dict[str, OsirisSlice]) -> None:
    for child in row.children:
        if child.name.startswith("extension:"):
            found[child.name.removeprefix("extension:")] = _slice(child)
        else:
            _top_slices(child, found)


@cache
def load_osiris(page: Path = OSIRIS_PAGE) -> OsirisProfile:
    text = page.read_text(encoding="utf-8")
    head = re.search(r"Official URL: (\S+) Version: (\S+)", text)
    assert head, f"{page} has no 'Official URL: ... Version: ...' line"
    root = _rows(_table(text))
    elements: dict[str, tuple[int, str]] = {}
    _walk(root, "", elements)
    extensions: dict[str, OsirisSlice] = {}
    _top_slices(root, extensions)
    return OsirisProfile(head[1], head[2], elements, extensions)


def osiris_settings_tree() -> dict[str, OsirisSlice]:
    """The Osiris series extensions by name ("imaging-settings", "series-weightheigt")."""
    return load_osiris().extensions


def _osiris_top(ext: Json) -> OsirisSlice | None:
    return next((s for s in osiris_settings_tree().values() if s.url == ext.get("url")), None)


def problems_in_osiris_series_extension(ext: Json) -> list[str]:
    """What keeps ``ext`` (imaging-settings or series-weightheigt) from conforming to the
    Osiris page: nesting, slice names, value types, max cardinality. Missing required
    slices are not problems here (scp2fhir leaves out what DICOM lacks and reports it as a
    gap): see :func:`missing_osiris_slices`."""
    top = _osiris_top(ext)
    if top is None:
        urls = sorted(s.url for s in osiris_settings_tree().values())
        return [f"url {ext.get('url')!r} is none of the Osiris series extensions {urls}"]
    return _osiris_problems(ext, top, top.name)


def _osiris_problems(ext: Any, s: OsirisSlice, where: str) -> list[str]:
    if not isinstance(ext, dict):
        return [f"{where}: {ext!r} is not an extension object"]
    subs, values = ext.get("extension", []), _values(ext)
    problems = [] if ext.get("url") == s.url else [f"{where}: url {ext.get('url')!r} != {s.url!r}"]
    problems += _either(where, subs, values)
    if s.subs:
        problems += [f"{where}: a complex extension carries {key}" for key in values]
        counts = Counter(_urls(subs))
        for url, n in counts.items():
            if url not in s.subs:
                problems.append(f"{where}: slice {url!r} is none of {sorted(s.subs)}")
            elif (high := s.subs[url].max) != "*" and n > int(high):
                problems.append(f"{where}.{url}: {n} occurrences, the profile allows {high}")
        for sub in subs:
            if (url := _url(sub)) in s.subs:
                problems += _osiris_problems(sub, s.subs[url], f"{where}.{url}")
        return problems
    if subs:
        problems.append(f"{where}: a simple extension carries sub-extensions")
    allowed = sorted({value_key(t) for t in s.types})
    problems += _cardinality(where, "value[x]", len(values), 0, "1")
    for key in values:
        if allowed and key not in allowed:
            problems.append(f"{where}: {key}, the profile wants {' or '.join(allowed)}")
        else:
            problems += _shape(f"{where}.{key}", key, ext[key])
    return problems


def missing_osiris_slices(ext: Json) -> list[str]:
    """The required (min >= 1) slices absent from ``ext``, as paths such as
    "imaging-settings.mr_image.flip_angle"; only under complex extensions that are present."""
    top = _osiris_top(ext)
    return [] if top is None else _missing(ext, top, top.name)


def _missing(ext: Json, s: OsirisSlice, where: str) -> list[str]:
    subs = [sub for sub in ext.get("extension", []) if isinstance(sub, dict)]
    present = Counter(_urls(subs))
    missing = [f"{where}.{url}" for url, d in s.subs.items() if present[url] < d.min]
    for sub in subs:
        if (d := s.subs.get(_url(sub))) is not None and d.subs:
            missing += _missing(sub, d, f"{where}.{d.url}")
    return missing
