"""New data: the ledger of landed files and the dataset (ledger.py), the landing check
(landing.py), the landed event (events.py), one training at a time (slots.py).

Imports tasks.ingest (the landing check runs pass 1) and tasks.common.
"""
