"""The shape every implementation-guide profile module has."""

from __future__ import annotations

from typing import Any

from workers.fold import StudyAggregate
from workers.profiles.gaps import Gaps

Resource = dict[str, Any]


class Profile:
    """A profile layered on the base mapping: the base builds the resource, the profile
    refines it in place (meta.profile, extensions, constraints) and reports what the
    DICOM data could not give. Pure: no I/O, no clock.

    Subclasses set the class attributes and override what they change.
    """

    #: ``SCP2FHIR_PROFILE`` value
    name: str = "base"
    #: Canonical URL of the profile's ImagingStudy StructureDefinition (meta.profile)
    url: str | None = None
    #: Version of the implementation guide the profile follows (a destination's
    #: ``profile_version`` must name it); None for FHIR's own resource
    version: str | None = None
    #: FHIR versions the profile is defined for
    fhir_versions: frozenset[str] = frozenset({"R4", "R5"})
    #: Whether instance records must carry their acquisition technique
    needs_technique: bool = False

    def refine_study(self, study: Resource, aggregate: StudyAggregate, gaps: Gaps) -> None:
        """Refine the ImagingStudy the base mapping built for ``aggregate``."""

    def refine_device(self, device: Resource) -> None:
        """Refine a Device of the study's transaction Bundle."""

    def claim(self, resource: Resource, url: str | None = None) -> None:
        """Name the profile in ``meta.profile`` (kept first, never duplicated)."""
        url = url or self.url
        if url is None:
            return
        meta = resource.setdefault("meta", {})
        profiles = [p for p in meta.get("profile", []) if p != url]
        meta["profile"] = [url, *profiles]
