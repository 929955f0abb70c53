"""What a destination receives: the study's aggregate, with what the destination leaves
out dropped and pseudonymized when it asks for that, mapped with the destination's FHIR
version, profile and Bundle choice.

Pure apart from loading a pseudonymization hook (an entry point) once per process.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any

from workers.delivery.pseudonymize import KeyedPseudonyms, Pseudonyms, pseudonymize
from workers.delivery.settings import PSEUDONYM_HOOKS, Destination, LeaveOut
from workers.fold import ENTERED_IN_ERROR, StudyAggregate
from workers.lifecycle.origin import with_origin
from workers.mapping import Resource, imaging_study, study_bundle

logger = logging.getLogger(__name__)


def leave_out(aggregate: StudyAggregate, rules: LeaveOut) -> StudyAggregate:
    """``aggregate`` without the instances ``rules`` leave out (and series left empty)."""
    if not rules:
        return aggregate
    modality = {uid: series.attrs.get("modality") for uid, series in aggregate.series.items()}
    instances = {
        sop: record
        for sop, record in aggregate.instances.items()
        if not rules.drops(record, modality.get(record.get("series_uid", "")))
    }
    kept_series = {record["series_uid"] for record in instances.values()}
    return replace(
        aggregate,
        instances=instances,
        series={uid: s for uid, s in aggregate.series.items() if uid in kept_series},
    )


def admits(destination: Destination, aggregate: StudyAggregate) -> bool:
    """Whether the study is for ``destination``: an instance it takes is shown, or the
    study is entered-in-error (every instance rejected, or retracted) and it took one of
    the instances received (so it learns that the study it has is withdrawn)."""
    if leave_out(aggregate, destination.leave_out).instances:
        return True
    if aggregate.status != ENTERED_IN_ERROR:
        return False
    rules = destination.leave_out
    return any(
        not rules.drops(got.record, aggregate.variants.get(got.series, {}).get("modality"))
        for got in aggregate.received.values()
    )


def destination_output(
    destination: Destination, aggregate: StudyAggregate, standalone: bool
) -> Resource | None:
    """The resource ``destination`` gets for ``aggregate`` (``standalone``: the
    ImagingStudy alone, for a server without transactions), marked as scp2fhir's;
    ``None`` when the study is not for it (:func:`admits`)."""
    if not admits(destination, aggregate):
        return None
    kept = leave_out(aggregate, destination.leave_out)
    if destination.pseudonymize is not None:
        kept = pseudonymize(kept, destination.pseudonymize, pseudonyms(destination))
    if destination.bundle and not standalone:
        return with_origin(study_bundle(kept, destination.fhir_version, destination.options))
    return with_origin(imaging_study(kept, destination.fhir_version, options=destination.options))


_pseudonyms: dict[str, Pseudonyms] = {}


def pseudonyms(destination: Destination) -> Pseudonyms:
    """The destination's pseudonym maker: its hook's, or the keyed recipes."""
    settings = destination.pseudonymize
    assert settings is not None
    made = _pseudonyms.get(destination.name)
    if made is not None:
        return made
    if settings.hook is not None:
        (point,) = entry_points(group=PSEUDONYM_HOOKS, name=settings.hook)
        factory: Any = point.load()
        made = factory(dict(settings.hook_options))
        logger.info(
            "destination=%s pseudonyms from hook %s (%s)", destination.name, point.name, point.value
        )
    else:
        assert settings.key is not None
        made = KeyedPseudonyms(settings.key.reveal().encode("utf-8"))
    _pseudonyms[destination.name] = made
    return made
