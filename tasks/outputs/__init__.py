"""What a run publishes: pass 2 over the kept rows (predict.py: predictions; score.py: scoring),
the champion gate (promote.py), the output tables as Delta Lake tables (tables.py), the publish of
a run (publish.py), what later runs remove (retention.py), the report and its plots (report.py,
plots.py), and the upkeep between runs (maintenance.py: vacuum, migrating an earlier release).

Imports tasks.model, tasks.ingest and tasks.common.
"""
