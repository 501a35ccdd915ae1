"""Pass 1: CSV files in, the run's data out (a Scan: row accounting, the kept rows, the quarantine,
the statistics per split and the profile sketch), in the order data flows through it:

    csvfile (header, sha256, byte ranges) -> blocks (read, parse) -> numbers, screen, suspects,
    validate (checks, quarantine records) -> split (train/holdout) -> batchstats, stats, profile
    (sums that add up) -> spill (kept rows) -> range_scan (one byte range) -> dedup, scan (a
    file's Scan, summed over files); cache, cache_entry (the pass-1 cache of per-file Scans)

Imports tasks.common only.
"""
