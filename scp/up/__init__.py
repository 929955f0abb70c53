"""``scp2fhir up``: the supervisor that runs the whole system on one machine (private
Redis, SCP, workers, status web, RQ dashboard) and the pieces only it needs."""
