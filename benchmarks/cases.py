"""One benchmark case, run in a fresh process so that its peak RSS is its own:

    python -m benchmarks.cases CASE CSV OUTDIR   ->  prints {"seconds": ..., ...} as JSON

Imports are not timed (each case starts its clock after them); only the work on the file is.
Each case imports what it uses, so that a case run as a whole process (benchmarks/startup.py
times the polars script so, imports included) loads only its own libraries.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

FEATURES = ("avg_income_k", "price_k", "tax_k")
TARGETS = ("units_sold_k",)


def floor(csv: Path, out: Path) -> dict:
    """pyarrow's read_csv (types inferred, all threads) + a predictions-sized Parquet write."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = pacsv.read_csv(csv)
    rows = table.num_rows
    extra = pa.array(np.zeros(rows))
    table = table.append_column("predicted", extra).append_column("residual", extra)
    pq.write_table(table, out / "floor.parquet")
    return {"seconds": time.perf_counter() - started, "rows": rows}


def stream_floor(csv: Path, out: Path) -> dict:
    """pyarrow's streaming reader (open_csv, types inferred from the first block) + a batched
    Parquet write of the same batches with two more columns: the floor for inputs bigger than
    memory."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    started = time.perf_counter()
    reader = pacsv.open_csv(csv, read_options=pacsv.ReadOptions(block_size=8 << 20))
    rows, writer = 0, None
    for batch in reader:
        extra = pa.array(np.zeros(batch.num_rows))
        table = pa.Table.from_batches([batch]).append_column("predicted", extra)
        table = table.append_column("residual", extra)
        if writer is None:
            writer = pq.ParquetWriter(out / "floor.parquet", table.schema)
        writer.write_table(table)
        rows += batch.num_rows
    writer.close()
    return {"seconds": time.perf_counter() - started, "rows": rows}


def peer(csv: Path, out: Path) -> dict:
    """pandas read_csv + pandera (lazy, bad rows dropped) + scikit-learn + to_parquet."""
    import pandas as pd
    import pandera.pandas as pa_
    from sklearn.linear_model import LinearRegression

    started = time.perf_counter()
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for column in (*FEATURES, *TARGETS):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    finite = pa_.Check(lambda s: np.isfinite(s))
    schema = pa_.DataFrameSchema(
        {
            "country": pa_.Column(str),
            "avg_income_k": pa_.Column(float, [pa_.Check.gt(0), finite]),
            "price_k": pa_.Column(float, [pa_.Check.gt(0), finite]),
            "tax_k": pa_.Column(float, [pa_.Check.ge(0), finite]),
            "units_sold_k": pa_.Column(float, [pa_.Check.ge(0), finite]),
        }
    )
    try:
        schema.validate(frame, lazy=True)
        bad = []
    except pa_.errors.SchemaErrors as err:
        bad = err.failure_cases["index"].dropna().astype(int).unique()
    good = frame.drop(index=bad)
    model = LinearRegression().fit(good[list(FEATURES)], good[list(TARGETS)])
    good = good.assign(predicted=model.predict(good[list(FEATURES)])[:, 0])
    good = good.assign(residual=good["units_sold_k"] - good["predicted"])
    good.to_parquet(out / "peer.parquet", index=False)
    return {"seconds": time.perf_counter() - started, "rows": len(frame), "accepted": len(good)}


def polars_peer(csv: Path, out: Path) -> dict:
    """polars read_csv (numbers as floats, bad values null) + pandera[polars] (lazy, failing
    rows dropped) + numpy least squares + write_parquet: the script a user writes in an hour."""
    import pandera.polars as pap
    import polars as pl

    started = time.perf_counter()
    numeric = dict.fromkeys((*FEATURES, *TARGETS), pl.Float64)
    frame = pl.read_csv(csv, schema_overrides=numeric, ignore_errors=True)
    frame = frame.with_row_index("row")
    finite = pap.Check(lambda data: data.lazyframe.select(pl.col(data.key).is_finite()))
    schema = pap.DataFrameSchema(
        {
            "country": pap.Column(str),
            **{name: pap.Column(float, [pap.Check.ge(0), finite]) for name in numeric},
        }
    )
    try:
        schema.validate(frame, lazy=True)
        good = frame
    except pap.errors.SchemaErrors as err:
        bad = err.failure_cases["index"].drop_nulls().unique()
        good = frame.filter(~pl.col("row").is_in(bad.implode()))
    X = np.column_stack([good[name].to_numpy() for name in FEATURES] + [np.ones(good.height)])
    y = good[TARGETS[0]].to_numpy()
    solution, *_ = np.linalg.lstsq(X, y, rcond=None)
    predicted = X @ solution
    good = good.with_columns(
        pl.Series("predicted", predicted), pl.Series("residual", y - predicted)
    )
    good.write_parquet(out / "polars_peer.parquet")
    return {"seconds": time.perf_counter() - started, "rows": frame.height, "accepted": good.height}


def steps(csv: Path, out: Path) -> dict:
    """This pipeline's steps called directly, with the default options: pass 1 (read, check,
    quarantine, duplicate keys, statistics), training (the default solver), pass 2
    (predictions), publish every table, the report and the manifest."""
    from concurrent.futures import ThreadPoolExecutor

    from schemas.params import RunConfig
    from tasks.common.storage import new_run, staging_area
    from tasks.ingest.scan import scan_file
    from tasks.ingest.validate import check_quality
    from tasks.model.evaluate import describe_model, fit_inference
    from tasks.model.train import fit_scan, solver_for
    from tasks.outputs.plots import model_plots, report_sample
    from tasks.outputs.predict import Scoring, predict_parts
    from tasks.outputs.promote import decide_promotion_task
    from tasks.outputs.publish import commit_training

    started = time.perf_counter()
    config = RunConfig(FEATURES, TARGETS)
    run = new_run(out / "steps", {})
    with staging_area(run.output_root, run.run_id) as staging:
        scan = scan_file(csv, 0, config, staging)
        check_quality(list(scan.files), config.max_bad_fraction)
        fit = fit_scan(scan, config)
        sample = report_sample(scan, fit.W, fit.b, FEATURES, TARGETS)
        with ThreadPoolExecutor(1) as side:  # as the flow: plots drawn while pass 2 writes
            plots = side.submit(model_plots, sample, fit.loss_history, TARGETS)
            scoring = Scoring.of(fit, scan)
            root = run.output_root
            predicted = predict_parts(scan.parts, scoring, config, root, run.run_id)
            inference = fit_inference(scan.train, predicted.sums, config)
            tables, results = describe_model(fit, inference, predicted.sums, scan.train.n, config)
            tables["profile"] = scan.profile_table()
            promotion = decide_promotion_task.fn(
                root, tables["weights"], fit.converged, scan.holdout, tables["profile"], config
            )
            manifest = commit_training(
                run, scan, predicted, tables, promotion, results, config, plots.result()
            )
    train = next(m for m in manifest["metrics"] if m["split"] == "train")
    return {
        "seconds": time.perf_counter() - started,
        "rows": manifest["rows"]["in"],
        "accepted": manifest["rows"]["accepted"],
        "solver": solver_for(config, scan.train.n),
        "epochs": fit.epochs,
        "relative_gap": train["relative_gap"],
    }


def stats(csv: Path, out: Path) -> dict:
    """Pass 1's statistics alone (tasks/ingest/stats.py): the factor of STATS_ROWS generated
    rows of the three features and the target, float64 column-major, in blocks of STATS_BLOCK
    rows (a batch's size at 10M rows), merged in order; the fastest of STATS_REPEATS. The rows
    are generated, not parsed (the CSV is not read): the clock sees only the statistics."""
    from benchmarks.generate import generate_design
    from tasks.ingest.stats import moments_of_columns, sum_moments

    values = generate_design(STATS_ROWS, seed=0)
    blocks = [
        np.asfortranarray(values[i : i + STATS_BLOCK]) for i in range(0, STATS_ROWS, STATS_BLOCK)
    ]
    moments_of_columns(blocks[0], len(FEATURES))  # its first call imports LAPACK's wrappers
    best = float("inf")
    for _ in range(STATS_REPEATS):
        started = time.perf_counter()
        sum_moments([moments_of_columns(block, len(FEATURES)) for block in blocks])
        best = min(best, time.perf_counter() - started)
    return {"seconds": best, "rows": STATS_ROWS, "blocks": len(blocks)}


# The stats case: rows, rows per block, and runs (the fastest one is reported).
STATS_ROWS, STATS_BLOCK, STATS_REPEATS = 10_000_000, 120_000, 5


def score(csv: Path, out: Path) -> dict:
    """score-sales' steps called directly on the file (its target column ignored), with a
    champion model in place: pass 1 of the features, pass 2 writing the scores, publish."""
    from schemas.params import RunConfig
    from tasks.common.storage import new_run, staging_area
    from tasks.ingest.scan import scan_file
    from tasks.ingest.validate import check_quality
    from tasks.outputs.predict import score_parts
    from tasks.outputs.score import choose_model, commit_scores

    root = out / "score"
    crown_champion(root)

    started = time.perf_counter()
    model_run_id, model = choose_model(root, None)
    config = RunConfig(model.features, (), holdout_fraction=0.0)
    run = new_run(root, {})
    with staging_area(root, run.run_id) as staging:
        scan = scan_file(csv, 0, config, staging)
        check_quality(list(scan.files), config.max_bad_fraction)
        scored = score_parts(scan.parts, model, model_run_id, config, root, run.run_id)
        manifest = commit_scores(run, scan, scored, model_run_id, config.keep_runs)
    return {"seconds": time.perf_counter() - started, "rows": manifest["rows"]["in"]}


def crown_champion(root: Path) -> str:
    """A champion as a training run leaves one: its weights, its row of `champions` and its
    row of `runs` in one commit (a champion without a committed run is none: a run that died
    before its commit). Returns its run id."""
    import pandas as pd

    from schemas.outputs import WeightsTable, descriptions_of
    from tasks.common.storage import new_run
    from tasks.outputs import tables
    from tasks.outputs.publish import arrow_of, build_manifest, committing, outputs_of

    champion = new_run(root, {})
    weight = [0.15, -4.0, -12.0, 8.0]
    empty = [float("nan")] * 4
    weights = pd.DataFrame(
        {
            "target": ["units_sold_k"] * 4,
            "feature": [*FEATURES, "(intercept)"],
            "weight": weight,
            "standardized_weight": [1.0] * 4,
            "scaler_mean": [1.0] * 3 + [None],
            "scaler_std": [1.0] * 3 + [None],
            "ls_weight": weight,
            **dict.fromkeys(("std_error", "t_stat", "p_value", "ci_low", "ci_high"), empty),
            "robust_std_error": empty,
            "confidence": [0.95] * 4,
            "dof": [1000] * 4,
            "residual_variance": empty,
            "covariance": [None] * 4,
            "note": ["a benchmark's model: no inference"] * 4,
        }
    )
    WeightsTable.validate(weights, lazy=True)
    promotion = {"promoted": True, "reason": "benchmark", "champion_before": None}
    with committing(champion) as commit:
        commit.append("weights", arrow_of(weights), descriptions_of(WeightsTable))
        row = {"run_id": champion.run_id, "reason": "benchmark", "holdout_mse": {}}
        if not tables.swap_champion(root, None, row):
            raise RuntimeError(f"{root}: a champion already")
        commit.crowned()
        outputs = outputs_of(champion, ["weights"])
        results = {"promotion": promotion}
        commit.finish(build_manifest(champion, (), "completed", outputs, results=results))
    return champion.run_id


def flow(csv: Path, out: Path) -> dict:
    """The whole train-sales-model flow with default options (PREFECT_API_URL: a running
    server)."""
    from flows.train import train_sales_model

    started = time.perf_counter()
    manifest = train_sales_model(data=str(csv), output=str(out / "flow"))
    train = next(m for m in manifest["metrics"] if m["split"] == "train")
    return {
        "seconds": time.perf_counter() - started,
        "rows": manifest["rows"]["in"],
        "relative_gap": train["relative_gap"],
    }


def incremental(csv: Path, out: Path) -> dict:
    """The pass-1 cache: the flow on `csv` alone fills it (not timed); then, on `csv` plus a
    landed file of LANDED_ROWS rows, a retrain (parses only the landed file), the same run
    again (an unchanged dataset: parses nothing) and a `--no-cache` run, in that order."""
    from flows.train import train_sales_model

    landed = csv.parent / f"landed_{LANDED_ROWS}.csv"
    if not landed.exists():
        from benchmarks.generate import generate_table, write_csv

        write_csv(generate_table(LANDED_ROWS, seed=1, first_id=10**9), landed)
    root = str(out / "incremental")
    train_sales_model(data=str(csv), output=root)
    result = {}
    for name, options in (
        ("retrain", {}),
        ("unchanged", {}),
        ("no_cache", {"use_cache": False}),
    ):
        # As when runs are minutes apart: the previous run's writes on disk, its training slot
        # settled on the server (a run right after another waited up to 2 s for the slot).
        os.sync()
        time.sleep(3.0)
        started = time.perf_counter()
        manifest = train_sales_model(data=[str(csv), str(landed)], output=root, **options)
        parsed = [f for f in manifest["inputs"] if f["pass1"] == "parsed"]
        slot = datetime.fromisoformat(manifest["started_at"]).timestamp()  # once it had the slot
        result[name] = {
            "seconds": time.perf_counter() - started,
            "in_slot": time.time() - slot,
            "parsed_rows": sum(f["rows"] for f in parsed),
            "parsed_bytes": sum(f["size_bytes"] for f in parsed),
            "rows": manifest["rows"]["in"],
        }
    return {"seconds": result["no_cache"]["seconds"], "runs": result}


# The landed file of the incremental case.
LANDED_ROWS = 100_000

CASES = {
    "floor": floor,
    "stream_floor": stream_floor,
    "peer": peer,
    "polars_peer": polars_peer,
    "steps": steps,
    "stats": stats,
    "score": score,
    "flow": flow,
    "incremental": incremental,
}


def main() -> None:
    name, csv, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SALES_MODEL_DATA_ROOTS", str(csv.parent))
    os.environ.setdefault("SALES_MODEL_OUTPUT_ROOTS", str(out))
    print(json.dumps(CASES[name](csv, out)))


if __name__ == "__main__":
    main()
