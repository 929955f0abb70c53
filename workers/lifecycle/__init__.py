"""The study lifecycle: the FHIR side follows what the PACS says after the first send.

* :mod:`~workers.lifecycle.consensus` -- pure: study and series attributes per attribute
  from the values the instances carry; the newest generation of records wins; how much
  the instances disagree (tags and counts, never values);
* :mod:`~workers.lifecycle.rejection` -- pure: IOCM rejection notes (Key Object Selection
  documents titled DCM 113001/113037/113038/113039) and the instances they name;
* :mod:`~workers.lifecycle.origin` -- the marker every written resource carries, and the
  check that scp2fhir never touches a server resource it did not write;
* :mod:`~workers.lifecycle.retraction` -- ``scp2fhir retract`` and ``scp2fhir forget``;
* :mod:`~workers.lifecycle.completion` -- MPPS and IAN as completion signals: emit as soon
  as every listed instance is folded, instead of waiting for the quiet period.

The README's "Study lifecycle" section says what each signal does and what wins.
"""
