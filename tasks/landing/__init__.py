"""New data: the ledger of landed files and the dataset (ledger.py), the landing check
(check.py), what a candidate file and its sha256 announcement are (announce.py: no Prefect, so
that `make land` moves a file in at once), the landed event (events.py), one training at a time
(slots.py), the bucket sensor (sensor.py).

Imports tasks.ingest (the landing check runs pass 1) and tasks.common.
"""
