"""Show the dataset every training run reads by default: the base file plus the latest accepted
version of each file landed in the ledger (a re-sent name replaces its earlier version), oldest
first, with the fingerprint the run's manifest will carry (`data_fingerprint`: two runs with the
same fingerprint trained on the same bytes).

    .venv/bin/python -m flows.dataset [--ledger DIR|URI]        (make dataset)
"""

from __future__ import annotations

import argparse
import sys

from schemas.params import DATASET, DEFAULT_LEDGER
from tasks.common import store
from tasks.common.errors import PipelineError, exit_code
from tasks.common.paths import data_roots
from tasks.common.storage import data_fingerprint
from tasks.landing.ledger import sha256_of, training_inputs


def describe(ledger: str) -> str:
    """One line per file of the dataset (sha256 prefix, size, path), then the fingerprint."""
    files = training_inputs(DATASET, ledger, data_roots())
    digests = [sha256_of(path) for path in files]
    lines = [
        f"{digest[:12]}  {store.size(path):>12,} B  {path}"
        for path, digest in zip(files, digests, strict=True)
    ]
    lines.append(f"{len(files)} file(s); data_fingerprint {data_fingerprint(digests)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.dataset", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--ledger", default=DEFAULT_LEDGER, help=f"default {DEFAULT_LEDGER}")
    args = parser.parse_args(argv)
    try:
        print(describe(args.ledger))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
