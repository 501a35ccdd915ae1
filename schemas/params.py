"""Typed flow parameters: one place for every default and every bound.

Prefect turns these annotations into the deployment's parameter schema, so a bad value
(`--param max_epochs=-5`) is refused before a run is created, and the CLI validates through the
same flow signature.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from schemas.sales import ID_COLUMN

# The dataset every training run reads unless told otherwise (nightly, the landing retrain, the
# command line): the base file plus every accepted landed file in the ledger, oldest first.
DATASET = "dataset"
DATASET_BASE = "data/sales.csv"
DEFAULT_DATA = DATASET
DEFAULT_OUTPUT = "output"
DEFAULT_SCORE_DATA = "data/score_sample.csv"
DEFAULT_LANDING = "data/landing"
DEFAULT_LEDGER = "data/ledger"
# A landed file must be unchanged for this long before it is picked up (writers still at work).
DEFAULT_SETTLE_SECONDS = 10.0
DEFAULT_HOLDOUT_FRACTION = 0.2
DEFAULT_SEED = 0
DEFAULT_MAX_EPOCHS = 20_000
DEFAULT_TOL = 1e-9
# A tenth of the rows may be bad before the run refuses the data: enough for the odd typo in a
# country file, low enough that a broken export (wrong units, shifted columns) stops the run.
DEFAULT_MAX_BAD_FRACTION = 0.1
DEFAULT_DTYPE = "float64"
# A candidate must be at least as good as the champion on the same holdout rows.
DEFAULT_PROMOTION_TOLERANCE = 0.0
# The id column of the input rows (unique within a file; the split is keyed on it); NO_ID for
# files without one (no duplicate-key check, the split keyed on the row's values).
DEFAULT_ID_COLUMN = ID_COLUMN
NO_ID = "none"
# Coefficient and prediction intervals: the level analysts quote by default.
DEFAULT_CONFIDENCE = 0.95
# Output retention: the predictions, scores and quarantine of the last this many runs of each
# kind (and the champion's) are kept; the small tables of every run are kept.
DEFAULT_KEEP_RUNS = 20
# Longer than any training here takes (100M rows: a few minutes); a hung run ends, freeing the
# training slot, instead of blocking every retrain after it. An operator with bigger data sets
# SALES_MODEL_TRAIN_TIMEOUT_SECONDS in the worker's environment (or a run's job variables). A run
# that has not committed this long after it started is dead: a later run removes its rows.
TRAIN_TIMEOUT_ENV = "SALES_MODEL_TRAIN_TIMEOUT_SECONDS"
DEFAULT_TRAIN_TIMEOUT_SECONDS = 3 * 3600.0
MAX_TRAIN_TIMEOUT_SECONDS = 30 * 86400.0  # dates computed from it stay in range


def train_timeout_seconds() -> float:
    """SALES_MODEL_TRAIN_TIMEOUT_SECONDS, or the default; ValueError naming the variable for a
    value that is not a positive number (check_train_inputs reports it before a run)."""
    value = os.environ.get(TRAIN_TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_TRAIN_TIMEOUT_SECONDS
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= MAX_TRAIN_TIMEOUT_SECONDS:  # also NaN and inf
        raise ValueError(
            f"{TRAIN_TIMEOUT_ENV}={value!r} is not a number of seconds above 0 and at most "
            f"{MAX_TRAIN_TIMEOUT_SECONDS:g} (30 days)"
        )
    return seconds


def _timeout_at_import() -> float:
    """The flow decorator takes its timeout as the module loads: a bad setting gives the
    default there, and the run that would use it is refused by train_timeout_seconds()."""
    try:
        return train_timeout_seconds()
    except ValueError:  # reported when a run starts, not at import
        return DEFAULT_TRAIN_TIMEOUT_SECONDS


RUN_TIMEOUT_SECONDS = _timeout_at_import()
# Drift is flagged when a column's mean moved by more than half a standard deviation of the
# champion's data.
DEFAULT_DRIFT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Option:
    """A parameter's command-line spelling where it is not `--<name-with-dashes>` (flows/cli.py
    generates the options from the flows' signatures)."""

    flags: tuple[str, ...] = ()
    metavar: str | None = None
    help: str | None = None  # for a flag that says the opposite of the description


DataPaths = Annotated[
    str | list[Annotated[str, Field(min_length=1)]],
    Field(description="A CSV file, a folder of CSVs, a glob, or a list of those."),
    Option(metavar="PATH"),
]
TrainingData = Annotated[
    DataPaths,
    Field(
        description=f"A CSV file, a folder of CSVs, a glob (paths or s3:// URIs), or a list of "
        f"those; '{DATASET}': "
        f"{DATASET_BASE} plus every accepted landed file in the ledger."
    ),
]
OutputRoot = Annotated[
    str,
    Field(
        min_length=1,
        description="The output root: a folder (created if missing) or an s3://bucket/prefix.",
    ),
    Option(metavar="DIR"),
]
LedgerDir = Annotated[
    str,
    Field(min_length=1, description="The ledger of landed files: a folder or an s3:// prefix."),
    Option(metavar="DIR"),
]
LandingDir = Annotated[
    str,
    Field(
        min_length=1,
        description="Where new files arrive: a folder or an s3://bucket/prefix.",
    ),
    Option(metavar="DIR"),
]
KeepRuns = Annotated[
    int,
    Field(
        ge=1,
        description="Keep the predictions, scores and quarantine of the last this many runs "
        "(and the champion's); older runs keep their weights, metrics and profile.",
    ),
]
UseCache = Annotated[
    bool,
    Field(description="Read and fill the pass-1 cache under the output root."),
    Option(
        flags=("--no-cache",),
        help="Parse every file, neither reading nor filling the pass-1 cache.",
    ),
]
ColumnList = Annotated[
    tuple[Annotated[str, Field(min_length=1)], ...],
    Field(min_length=1, description="CSV column names."),
    Option(metavar="COLUMN"),
]
Features = Annotated[ColumnList, Field(description="Feature columns.")]
Targets = Annotated[ColumnList, Field(description="Target columns (several allowed: W is [k, d]).")]
HoldoutFraction = Annotated[
    float, Field(ge=0.0, lt=1.0, description="Share of rows held out for evaluation, [0, 1).")
]
Seed = Annotated[int, Field(ge=0, description="Seed for the split and the initial weights.")]
MaxEpochs = Annotated[int, Field(ge=1, description="Upper bound on gradient-descent epochs.")]
LearningRate = Annotated[
    float | None,
    Field(
        gt=0.0,
        description="Step size of the preconditioned gradient descent; default 1/L (auto: one "
        "step reaches the optimum up to rounding).",
    ),
    Option(flags=("--lr",)),
]
Tolerance = Annotated[
    float,
    Field(
        gt=0.0,
        lt=1.0,
        description="Stop when the certificate bounds the relative MSE gap to the least-squares "
        "optimum (of the data as float64 holds it), and every coefficient's distance to the "
        "optimum's relative to the largest, below this.",
    ),
]
BadFraction = Annotated[
    float, Field(ge=0.0, le=1.0, description="Largest share of quarantined rows a run accepts.")
]
PromotionTolerance = Annotated[
    float,
    Field(ge=0.0, description="Relative holdout-MSE slack a new model gets against the champion."),
]
IdColumn = Annotated[
    str,
    Field(
        min_length=1,
        description=f"Id column of the rows (unique within a file; the split is keyed on it), "
        f"or '{NO_ID}' for files without one (no duplicate-key check, the split keyed on the "
        "row's values).",
    ),
]


def id_column_of(value: str) -> str | None:
    """The id column a parameter names (None for NO_ID)."""
    return None if value.strip().lower() == NO_ID else value


Confidence = Annotated[
    float,
    Field(gt=0.0, lt=1.0, description="Level of the coefficient and prediction intervals."),
]
SettleSeconds = Annotated[
    float, Field(ge=0.0, description="Seconds a landed file must be unchanged before pickup.")
]
DriftThreshold = Annotated[
    float, Field(gt=0.0, description="Standardized mean shift above which drift is flagged.")
]
# Run ids as tasks/common/storage.py makes them (`20261201T081530.123Z-1a2b3c4d`); ids of releases
# before milliseconds were added (`20261127T142135Z-d0088408`) are still accepted.
RUN_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}(\.[0-9]{3})?Z-[0-9a-f]{8}$"
RUN_ID_EXAMPLE = "20261201T081530.123Z-1a2b3c4d"


def _check_run_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(RUN_ID_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a run id (they look like {RUN_ID_EXAMPLE}: the names of the "
            "files in <output>/manifests/)"
        )
    return value


RunId = Annotated[
    str | None,
    AfterValidator(_check_run_id),
    Field(description="A training run id.", json_schema_extra={"pattern": RUN_ID_PATTERN}),
]
# auto: `direct` while the training rows are few (AUTO_DIRECT_MAX_ROWS), `moments` above.
# direct: autograd over the rows every epoch, as in the notebook. moments: the same loss and
# gradients from float64 sufficient statistics, O(d^2) per epoch whatever the row count.
DEFAULT_SOLVER = "auto"
AUTO_DIRECT_MAX_ROWS = 50_000
Solver = Annotated[
    Literal["auto", "direct", "moments"],
    Field(
        description="direct: autograd over the training rows each epoch, as in the notebook; "
        "moments: the same loss and gradients from float64 sufficient statistics, O(d^2) per "
        f"epoch whatever the row count; auto: direct up to {AUTO_DIRECT_MAX_ROWS:,} training "
        "rows, moments above."
    ),
]
Dtype = Annotated[
    Literal["float32", "float64"],
    Field(
        description="Tensor dtype of training: float64 certifies the coefficients to the "
        "default tol; float32 halves the direct solver's memory and holds about 7 digits (a "
        "tol near 1e-6). The moments solver is always float64."
    ),
]
# Split each input file into byte ranges of about this many MB, one task each (for a Dask
# cluster); 0 reads each file as one range, its blocks parsed in parallel threads.
SplitMB = Annotated[
    float,
    Field(ge=0.0, description="Byte ranges of about this many MB per task (0: a task per file)."),
]
DEFAULT_SPLIT_MB = 0.0
# Text read and checked at a time: about 120k rows of the sales contract (a few blocks are in
# flight per thread; bigger blocks cost memory and gain nothing measurable).
BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class RunConfig:
    """The settings of one run, built once from the flow's parameters and passed as one value.
    The columns and the split decide what pass 1 keeps (and so the pass-1 cache's key); the rest
    is training, the gate, whether the cache is used and how the work is cut (block size,
    threads, byte ranges)."""

    features: tuple[str, ...]
    targets: tuple[str, ...]
    id_column: str | None = DEFAULT_ID_COLUMN
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    seed: int = DEFAULT_SEED
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    max_epochs: int = DEFAULT_MAX_EPOCHS
    lr: float | None = None
    tol: float = DEFAULT_TOL
    dtype: str = DEFAULT_DTYPE
    solver: str = DEFAULT_SOLVER
    promotion_tolerance: float = DEFAULT_PROMOTION_TOLERANCE
    drift_threshold: float = DEFAULT_DRIFT_THRESHOLD
    confidence: float = DEFAULT_CONFIDENCE
    keep_runs: int = DEFAULT_KEEP_RUNS
    use_cache: bool = True
    block_bytes: int = BLOCK_BYTES
    split_bytes: int = 0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    @staticmethod
    def of(parameters: dict[str, Any], **changes: Any) -> RunConfig:
        """The settings of a run from its flow's parameters, taken by name (`id_column` as
        id_column_of reads it, `split_mb` in bytes), then `changes`."""
        names = {f.name for f in fields(RunConfig)}
        given = {name: value for name, value in parameters.items() if name in names}
        if "id_column" in given:
            given["id_column"] = id_column_of(given["id_column"])
        if "split_mb" in parameters:
            given["split_bytes"] = int(parameters["split_mb"] * 2**20)
        for name in ("features", "targets"):
            if name in given:
                given[name] = tuple(given[name])
        return RunConfig(**(given | changes))

    @property
    def values(self) -> tuple[str, ...]:
        """The numeric columns: features, then targets."""
        return (*self.features, *self.targets)

    def with_changes(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)
