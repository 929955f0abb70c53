"""Pseudonymization of a destination's copy, on real headers: the rules table, keyed and
deterministic pseudonyms, date shifts, and a site's own hook as a real entry point."""

from __future__ import annotations

import copy
import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import keyword_for_tag

from scp.secret import Secret
from tests import samples
from workers.delivery.output import destination_output, pseudonyms
from workers.delivery.pseudonymize import (
    RULES,
    KeyedPseudonyms,
    kept_keywords,
    pseudonymize,
    shift_date,
)
from workers.delivery.settings import Destination, Pseudonymization
from workers.fold import StudyAggregate, fold_all
from workers.mapping import MappingOptions
from workers.summary import summarize

KEY = "a-test-key-that-is-long-enough-0001"
OTHER_KEY = "another-test-key-long-enough-0002"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Values a modality or RIS fills in that name the patient, the people or the place.
IDENTITY = {
    "00081030": {"vr": "LO", "Value": ["Thorax of John Doe"]},  # StudyDescription
    "0008103E": {"vr": "LO", "Value": ["Doe chest series"]},  # SeriesDescription
    "00200010": {"vr": "SH", "Value": ["STUDY-0815"]},  # StudyID
    "00081010": {"vr": "SH", "Value": ["CTSTATION7"]},  # StationName
    "00080080": {"vr": "LO", "Value": ["St. Example Hospital"]},  # InstitutionName
    "00321060": {"vr": "LO", "Value": ["Chest CT for Mr Doe"]},  # RequestedProcedureDesc.
    "00321030": {"vr": "LO", "Value": ["Doe has a cough"]},  # ReasonForStudy
    "00020016": {"vr": "AE", "Value": ["MODALITY_CT7"]},  # the calling AE (the SCP's)
}


def identifying_headers(instances: int = 3) -> list[dict[str, Any]]:
    """DICOM JSON headers of a CT and an MR series of one study, full of identifying
    values (samples.enriched_* plus :data:`IDENTITY`), as the SCP pushes them."""
    headers = []
    for index, ds in enumerate((samples.enriched_ct(), samples.enriched_mr_knee())):
        base: dict[str, Any] = samples.header_of(ds)
        for n in range(instances):
            header = copy.deepcopy(base)
            header.update(copy.deepcopy(IDENTITY))
            header["00080018"]["Value"] = [f"{samples.ROOT}1.{index + 1}.{n + 1}"]
            header["00200013"] = {"vr": "IS", "Value": [n + 1]}
            headers.append(header)
    return headers


def study_of(headers: list[dict[str, Any]]) -> StudyAggregate:
    (study,) = fold_all(summarize(h, with_technique=True) for h in headers).values()
    return study


#: VRs whose values may identify (names, IDs, texts, dates, UIDs, AE titles).
IDENTIFYING_VRS = {"PN", "LO", "SH", "DA", "UI", "AE", "LT", "ST", "UT", "UR"}


def identifying_values(headers: list[dict[str, Any]]) -> set[str]:
    """Every PN/LO/SH/DA/UI (and AE/LT/ST/UT/UR) value of ``headers``, in each form the
    output could hold it (a name's components, a date as FHIR writes it), except the
    values of elements the rules table keeps on purpose and DICOM's own UIDs (SOP
    classes, transfer syntaxes: the standard's constants, not the study's)."""
    kept = kept_keywords()
    found: set[str] = set()

    def walk(dataset: dict[str, Any]) -> None:
        for tag, element in dataset.items():
            vr = element.get("vr")
            for value in element.get("Value") or []:
                if vr == "SQ":
                    walk(value)
                    continue
                if vr not in IDENTIFYING_VRS or keyword_for_tag(int(tag, 16)) in kept:
                    continue
                text = value.get("Alphabetic", "") if vr == "PN" else str(value)
                if not text.strip() or (vr == "UI" and text.startswith("1.2.840.10008.")):
                    continue
                found.add(text.strip())
                if vr == "PN":
                    found.update(p.strip() for p in re.split(r"[\^=]", text) if p.strip())
                if vr == "DA" and len(text) == 8:
                    found.add(f"{text[:4]}-{text[4:6]}-{text[6:]}")

    for header in headers:
        walk(header)
    return found


def strings(resource: Any) -> Iterator[str]:
    if isinstance(resource, dict):
        for value in resource.values():
            yield from strings(value)
    elif isinstance(resource, list):
        for value in resource:
            yield from strings(value)
    elif isinstance(resource, str):
        yield resource


def leaks(values: set[str], output: Any) -> list[str]:
    """The values found in ``output``: as a substring when long enough to mean
    something, else as a whole string value."""
    text = json.dumps(output, ensure_ascii=False).lower()
    whole = {s.lower() for s in strings(output)}
    return sorted(v for v in values if (v.lower() in text if len(v) >= 4 else v.lower() in whole))


def research(key: str = KEY, **rules: Any) -> Destination:
    settings = Pseudonymization(
        key=Secret(key),
        patient_id_system="https://dic.example.org/sid/patient",
        accession_system="https://dic.example.org/sid/accession",
        **rules,
    )
    options = MappingOptions(
        patient_id_system=settings.patient_id_system,
        accession_system=settings.accession_system,
        bundle=True,
        profile="mii",
    )
    name = f"research-{uuid.uuid4().hex[:8]}"  # pseudonym makers are cached per name
    return Destination(
        name, folder=Path("x"), profile="mii", bundle=True, options=options, pseudonymize=settings
    )


# --- the table ----------------------------------------------------------------------------


def test_the_table_names_every_attribute_a_summary_can_hold() -> None:
    """An attribute the table does not name is removed (allow-list); this test makes
    whoever adds one to the summary decide its rule."""
    source = (Path(__file__).parent.parent / "workers" / "summary.py").read_text()
    produced = set(re.findall(r'_put\(out, "(\w+)"', source)) | {"series_uid", "technique"}
    named = {rule.attribute for rule in RULES}
    assert produced - named == set()


def test_the_pseudonymized_copy_holds_none_of_the_identifying_values() -> None:
    headers = identifying_headers()
    values = identifying_values(headers)
    # The collection is not vacuous: it has the names, IDs, places and dates of the study.
    for expected in ("Doe", "John", "MRN-0042", "ACC-2024-0001", "1970-02-15", "CTSTATION7"):
        assert expected in values
    plain = destination_output(
        Destination(
            "plain",
            folder=Path("x"),
            bundle=True,
            options=MappingOptions(bundle=True, patient_id_system="urn:oid:1.2.3"),
        ),
        study_of(headers),
        standalone=False,
    )
    assert plain is not None
    assert {"Doe", "MRN-0042", "ACC-2024-0001", "1970-02-15"} <= set(leaks(values, plain)), (
        "the control: without pseudonymization the grep finds them"
    )
    copy_ = destination_output(
        research(birth_date="year", dates="shift"), study_of(headers), standalone=False
    )
    assert copy_ is not None
    assert leaks(values, copy_) == []
    patient = next(
        e["resource"] for e in copy_["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert patient["birthDate"] == "1970" and "name" not in patient
    identifier = patient["identifier"][0]
    assert identifier["system"] == "https://dic.example.org/sid/patient"
    assert re.fullmatch(r"[0-9a-f]{32}", identifier["value"])


def test_with_dates_kept_only_the_dates_of_the_study_remain() -> None:
    headers = identifying_headers()
    copy_ = destination_output(research(dates="keep"), study_of(headers), standalone=False)
    found = leaks(identifying_values(headers), copy_)
    assert found and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}|\d{8}", v) for v in found), found
    assert "1970-02-15" not in found, "the birth date is removed all the same"


def test_same_study_same_pseudonyms_another_key_other_ones() -> None:
    headers = identifying_headers()
    first = destination_output(research(), study_of(headers), standalone=False)
    again = destination_output(research(), study_of(copy.deepcopy(headers)), standalone=False)
    other = destination_output(research(OTHER_KEY), study_of(headers), standalone=False)
    assert first == again
    assert first is not None and other is not None

    def ids(bundle: dict[str, Any]) -> set[str]:
        return {
            s
            for s in strings(bundle)
            if s.startswith(("urn:oid:2.25.", "2.25.")) or re.fullmatch(r"[0-9a-f]{16,32}", s)
        }

    assert ids(first) and ids(first).isdisjoint(ids(other))


def test_uids_are_valid_2_25_uids_of_version_8_uuids() -> None:
    maker = KeyedPseudonyms(KEY.encode())
    for uid in (samples.ROOT + "1", "1.2.3", "9" * 64):
        mapped = maker.uid(uid)
        assert mapped.startswith("2.25.") and len(mapped) <= 64 and _UID.match(mapped)
        as_uuid = uuid.UUID(int=int(mapped[5:]))
        assert as_uuid.version == 8 and as_uuid.variant == uuid.RFC_4122
        assert maker.uid(uid) == mapped
    assert maker.uid("1.2.3") != KeyedPseudonyms(OTHER_KEY.encode()).uid("1.2.3")


def test_a_date_shift_keeps_intervals_and_precision() -> None:
    days = KeyedPseudonyms(KEY.encode()).date_shift_days("MRN-0042")
    assert 1 <= days <= 365
    assert shift_date("2004-01-19T07:27:30-05:00", 19) == "2003-12-31T07:27:30-05:00"
    assert shift_date("2004-03-01", 1) == "2004-02-29"
    assert shift_date("2004-03", 1) == "2004-02"
    assert shift_date("2004", 1) == "2003"
    assert shift_date("garbage", 1) is None
    headers = identifying_headers()
    aggregate = study_of(headers)
    copy_ = pseudonymize(
        aggregate, Pseudonymization(key=Secret(KEY), dates="shift"), KeyedPseudonyms(KEY.encode())
    )
    assert copy_.study is not None and aggregate.study is not None
    assert copy_.study.attrs["started"] == shift_date(aggregate.study.attrs["started"], days)


def test_the_rules_one_by_one() -> None:
    aggregate = study_of(identifying_headers())
    maker = KeyedPseudonyms(KEY.encode())
    copy_ = pseudonymize(aggregate, Pseudonymization(key=Secret(KEY)), maker)
    assert aggregate.study is not None and copy_.study is not None
    study = copy_.study.attrs
    assert study["patient_id"] == maker.patient_id("MRN-0042")
    assert study["accession_number"] == maker.accession_number("ACC-2024-0001")
    assert len(study["accession_number"]) == 16
    for removed in (
        "patient_name",
        "patient_birth_date",
        "patient_id_issuer",
        "referrer",
        "interpreters",
        "institution",
        "department",
        "comments",
        "study_id",
        "study_description",
        "reason_texts",
        "accession_issuer",
    ):
        assert removed in aggregate.study.attrs or removed == "study_id", removed
        assert removed not in study, removed
    assert (
        study["patient_sex"] == "M" and study["procedures"] == aggregate.study.attrs["procedures"]
    )
    assert copy_.study_uid == maker.uid(aggregate.study_uid)
    assert set(copy_.instances) == {maker.uid(sop) for sop in aggregate.instances}
    assert set(copy_.series) == {maker.uid(uid) for uid in aggregate.series}
    for record in copy_.instances.values():
        assert record["series_uid"] in copy_.series
        assert "calling_ae" not in record and "technique" in record
    for series in copy_.series.values():
        assert not {
            "station",
            "serial_number",
            "operators",
            "performing_physicians",
            "series_description",
        } & set(series.attrs)
        assert series.attrs["manufacturer"]
    kept = pseudonymize(aggregate, Pseudonymization(key=Secret(KEY), descriptions="keep"), maker)
    assert kept.study is not None and kept.study.attrs["study_description"] == "Thorax of John Doe"


# --- a site's own pseudonyms: an entry point ------------------------------------------------

HOOK = '''
class Pseudonyms:
    """A site's pseudonym service stand-in: a table it was given."""

    def __init__(self, options):
        self.prefix = options["prefix"]

    def patient_id(self, value):
        return self.prefix + "-P-" + str(len(value))

    def accession_number(self, value):
        return self.prefix + "-A"

    def uid(self, value):
        return "2.25." + str(sum(map(ord, value)))

    def date_shift_days(self, patient_id):
        return 0
'''


@pytest.fixture
def installed_hook(tmp_path: Path) -> Iterator[str]:
    """A real distribution on sys.path whose entry point names the hook."""
    (tmp_path / "site_pseudonyms.py").write_text(HOOK)
    info = tmp_path / "site_pseudonyms-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: site-pseudonyms\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[scp2fhir.pseudonyms]\nsite = site_pseudonyms:Pseudonyms\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield "site"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("site_pseudonyms", None)


def test_a_hook_makes_the_pseudonyms_the_rules_stay(installed_hook: str, tmp_path: Path) -> None:
    from scp import config
    from workers.delivery.settings import delivery_settings
    from workers.settings import WorkerSettings

    path = tmp_path / "c.toml"
    path.write_text(
        '[[destinations]]\nname = "hooked"\nfolder = "out"\n'
        f'[destinations.pseudonymize]\nhook = "{installed_hook}"\n'
        '[destinations.pseudonymize.hook_options]\nprefix = "DIZ"\n'
    )
    loaded = config.load({"SCP2FHIR_CONFIG": str(path)})
    worker = config.settings(loaded, WorkerSettings)
    (destination,) = delivery_settings(loaded, worker).destinations
    assert destination.pseudonymize is not None and destination.pseudonymize.key is None
    maker = pseudonyms(destination)
    assert type(maker).__module__ == "site_pseudonyms"
    aggregate = study_of(identifying_headers())
    copy_ = pseudonymize(aggregate, destination.pseudonymize, maker)
    assert copy_.study is not None
    assert copy_.study.attrs["patient_id"] == "DIZ-P-8"
    assert copy_.study_uid.startswith("2.25.")
    assert "patient_name" not in copy_.study.attrs, "what is removed stays removed"


def test_the_readme_shows_the_table() -> None:
    from workers.delivery.pseudonymize import table_rows

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for row in table_rows():
        assert row in readme, row
