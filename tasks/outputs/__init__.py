"""Outputs: the tables a run writes under the output root, and how they are committed."""
