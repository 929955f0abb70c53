"""The base profile: FHIR's own ImagingStudy, exactly as the mapping builds it."""

from __future__ import annotations

from workers.profiles.profile import Profile


class BaseProfile(Profile):
    pass


PROFILE = BaseProfile()
