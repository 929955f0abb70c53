"""Implementation-guide profiles, selected with ``SCP2FHIR_PROFILE``.

Each profile is one module holding one :class:`Profile` (``PROFILE``) that refines what
the base mapping builds; none knows about another. Adding a profile is a new module and
one line in :data:`PROFILES`.

* ``base`` -- FHIR ImagingStudy (R4 or R5) as the base mapping builds it;
* ``mii`` -- German Medical Informatics Initiative, module Bildgebung 2026.0.0 (R4);
* ``mii-2027`` -- the same module's 2027.0.0-ballot (R4);
* ``osiris`` -- French Osiris oncology ImagingStudy (R4);
* ``qicore`` -- US QI-Core ImagingStudy (R4).
"""

from __future__ import annotations

from workers.profiles.base import PROFILE as BASE
from workers.profiles.gaps import Gap, Gaps
from workers.profiles.mii import PROFILE as MII
from workers.profiles.mii import PROFILE_2027 as MII_2027
from workers.profiles.osiris import PROFILE as OSIRIS
from workers.profiles.profile import Profile
from workers.profiles.qicore import PROFILE as QICORE

PROFILES: dict[str, Profile] = {
    profile.name: profile for profile in (BASE, MII, MII_2027, OSIRIS, QICORE)
}


def profile_named(name: str) -> Profile:
    """The profile called ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        choices = ", ".join(PROFILES)
        raise ValueError(f"SCP2FHIR_PROFILE={name!r} is not one of {choices}") from None


__all__ = ["PROFILES", "Gap", "Gaps", "Profile", "profile_named"]
