"""One benchmark case, run in a fresh process so that its peak RSS is its own:

    python -m benchmarks.cases CASE CSV OUTDIR   ->  prints {"seconds": ..., ...} as JSON

Imports are not timed (each case starts its clock after them); only the work on the file is.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FEATURES = ("avg_income_k", "price_k", "tax_k")
TARGETS = ("units_sold_k",)


def floor(csv: Path, out: Path) -> dict:
    """pyarrow's read_csv (types inferred, all threads) + a predictions-sized Parquet write."""
    started = time.perf_counter()
    table = pacsv.read_csv(csv)
    rows = table.num_rows
    extra = pa.array(np.zeros(rows))
    table = table.append_column("predicted", extra).append_column("residual", extra)
    pq.write_table(table, out / "floor.parquet")
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


def steps(csv: Path, out: Path) -> dict:
    """This pipeline's steps called directly, on the path the flow picks for this file size
    (in memory up to stream_above_mb, streamed above it)."""
    from schemas.params import DEFAULT_STREAM_ABOVE_MB

    if csv.stat().st_size > DEFAULT_STREAM_ABOVE_MB * 2**20:
        return {**stream(csv, out), "path": "streamed"}
    return {**memory(csv, out), "path": "in memory"}


def memory(csv: Path, out: Path) -> dict:
    """The in-memory path: read, validate, split, statistics, train (moments), evaluate,
    publish every table, the report and the manifest."""
    from tasks.evaluate import evaluate_run
    from tasks.prepare import prepare_file
    from tasks.publish import publish_outputs
    from tasks.storage import new_run
    from tasks.train import fit_from_moments

    started = time.perf_counter()
    prepared = prepare_file(csv, FEATURES, TARGETS, 0.2, 0)
    data = prepared.data
    fit = fit_from_moments(prepared.moments, max_epochs=20_000, tol=1e-12, seed=0)
    tables = evaluate_run.fn(data.accepted, prepared.is_holdout, fit, FEATURES, TARGETS, 0)
    run = new_run(out / "steps", {})
    manifest = publish_outputs(run, data, tables, fit, FEATURES, TARGETS, 0.0, 0.5)
    return _result(started, manifest, fit)


def stream(csv: Path, out: Path) -> dict:
    """The streaming path: pass 1 (read and validate in blocks, quarantine, duplicate check,
    statistics), train (moments), pass 2 (predictions), publish every table, the report and
    the manifest."""
    from tasks.publish import publish_streamed
    from tasks.scan import StreamedData, emit_file, evaluate_streamed, scan_file
    from tasks.storage import data_fingerprint, new_run, staging_area, table_metadata
    from tasks.train import fit_from_moments

    started = time.perf_counter()
    run = new_run(out / "steps", {})
    with staging_area(run.output_root, run.run_id) as staging:
        streamed = StreamedData([scan_file(csv, 0, FEATURES, TARGETS, 0.2, 0, staging)])
        fit = fit_from_moments(streamed.moments, max_epochs=20_000, tol=1e-12, seed=0)
        fingerprint = data_fingerprint([f.sha256 for f in streamed.files])
        metadata = table_metadata(run, "predictions", fingerprint)
        scoring = streamed.scoring(fit)
        emits = [
            emit_file(scan, FEATURES, TARGETS, staging, scoring, metadata)
            for scan in streamed.scans
        ]
        tables = evaluate_streamed.fn(streamed, emits, fit, FEATURES, TARGETS)
        manifest = publish_streamed(run, streamed, emits, tables, fit, FEATURES, TARGETS, 0.0, 0.5)
    return _result(started, manifest, fit)


def _result(started: float, manifest: dict, fit) -> dict:
    train = next(m for m in manifest["metrics"] if m["split"] == "train")
    return {
        "seconds": time.perf_counter() - started,
        "rows": manifest["rows"]["in"],
        "accepted": manifest["rows"]["accepted"],
        "epochs": fit.epochs,
        "relative_gap": train["relative_gap"],
    }


def flow(csv: Path, out: Path) -> dict:
    """The whole train-sales-model flow through Prefect (PREFECT_API_URL: a running server)."""
    from flows.train import train_sales_model

    started = time.perf_counter()
    manifest = train_sales_model(
        data=str(csv),
        output=str(out / "flow"),
        solver="moments",
        tol=1e-12,
        max_bad_fraction=0.1,
    )
    train = next(m for m in manifest["metrics"] if m["split"] == "train")
    return {
        "seconds": time.perf_counter() - started,
        "rows": manifest["rows"]["in"],
        "relative_gap": train["relative_gap"],
    }


CASES = {
    "floor": floor,
    "peer": peer,
    "steps": steps,
    "memory": memory,
    "stream": stream,
    "flow": flow,
}


def main() -> None:
    name, csv, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SALES_MODEL_DATA_ROOTS", str(csv.parent))
    os.environ.setdefault("SALES_MODEL_OUTPUT_ROOTS", str(out))
    print(json.dumps(CASES[name](csv, out)))


if __name__ == "__main__":
    main()
