"""Reconcile scp2fhir with a PACS and fetch what it lacks (``scp2fhir reconcile``,
``scp2fhir backfill``, the workers' scheduled reconcile).

The PACS is asked what it has (:mod:`scp.pacs.query`, one day at a time); scp2fhir's side
is what it holds (the study aggregates) or, once they have expired, what it last emitted
(:mod:`workers.ledger`). The two are compared per study, and per series where the counts
disagree, into verdicts: missing, incomplete, complete, unknown to the PACS. Fetching is
a C-MOVE to scp2fhir's own SCP, so instances arrive through the normal path.

* :mod:`~workers.reconcile.holdings` -- what scp2fhir holds of a study (Redis)
* :mod:`~workers.reconcile.verdict` -- pure: PACS counts + holdings -> verdict
* :mod:`~workers.reconcile.survey` -- the verdicts of a day / a date range
* :mod:`~workers.reconcile.fetcher` -- bounded concurrent C-MOVEs
* :mod:`~workers.reconcile.report` -- the table and the JSON of ``reconcile``
* :mod:`~workers.reconcile.runs` -- a backfill's resumable state in Redis
* :mod:`~workers.reconcile.progress` -- the backfill's progress line (rates, ETA)
* :mod:`~workers.reconcile.backfill` -- day-by-day backfill
* :mod:`~workers.reconcile.command` -- the two CLI verbs
* :mod:`~workers.reconcile.schedule` -- the workers' periodic reconcile (off by default)
"""
