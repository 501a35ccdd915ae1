"""The command the `make serve` stack's process worker starts for each flow run (the pool's base
job template, scripts/local_prefect.py): `python -m flows.engine`, Prefect's own engine entry
(`python -m prefect.engine`, which reads the run's id from PREFECT__FLOW_RUN_ID), run in the
stack's warm runner (flows/warm.py; its folder in SALES_MODEL_WARM_RUNNER_DIR) when it takes
the run: the run then skips importing the pipeline (~3 s). The worker's signals (it cancels a
run with SIGTERM) reach the run, and this process ends as the run did. When the runner refuses
(or is not there), this process runs the flow itself, exactly as Prefect's would, and says why
on stderr (the worker's log).
"""

from __future__ import annotations

if __name__ == "__main__":
    import os
    import sys
    from pathlib import Path

    from flows.warm import hand_over

    if folder := os.environ.get("SALES_MODEL_WARM_RUNNER_DIR"):
        why = hand_over("flows.engine", Path(folder))
        print(f"note: the flow run imports the pipeline itself: {why}", file=sys.stderr)

import runpy
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    """Run `python -m prefect.engine [argv]` here: its `__main__` block, as Python would."""
    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    # The warm runner has imported prefect.engine as a module; its code runs afresh as __main__
    # all the same (what `-m` does), so runpy's warning about it says nothing here.
    warnings.filterwarnings("ignore", "'prefect.engine' found in sys.modules", RuntimeWarning)
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
