"""Pure: a study aggregate -> FHIR resources (R4 4.0.1 or R5 5.0.0) as JSON dicts.

Shared by the workers and ``scp2fhir convert``. Output is deterministic: series
sorted by number then UID, instances by number then UID, modalities sorted.

* :func:`imaging_study` -- the ImagingStudy alone (Patient by identifier);
* :func:`study_bundle` -- one transaction Bundle with Patient, Endpoint, Device(s)
  and the ImagingStudy; :func:`study_resources` -- the same resources as a list;
* :func:`emitted` -- whichever of the two :class:`MappingOptions` asks for;
* :func:`standalone_resources` -- the dose Observations and ImagingSelections as
  resources of their own, for the files beside a standalone ImagingStudy.

The README's "Mapping" section lists every element and its DICOM source.
"""

from workers.mapping.common import Resource, fhir_id
from workers.mapping.companions import (
    emitted,
    patient_resource,
    standalone_resources,
    study_bundle,
    study_resources,
)
from workers.mapping.options import FhirVersion, MappingOptions
from workers.mapping.study import imaging_study

__all__ = [
    "FhirVersion",
    "MappingOptions",
    "Resource",
    "emitted",
    "fhir_id",
    "imaging_study",
    "patient_resource",
    "standalone_resources",
    "study_bundle",
    "study_resources",
]
