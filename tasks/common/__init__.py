"""Plumbing below every stage: user errors (errors.py), allowed locations (paths.py), retries
(retry.py), the run's logger (runlog.py), atomic writes, working files and run ids (storage.py).

Imports nothing else of tasks/.
"""
