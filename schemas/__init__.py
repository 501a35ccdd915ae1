"""Data contracts: the input CSV, every Parquet output, and the typed flow parameters."""
