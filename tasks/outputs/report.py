"""Report: a run summary for people. Markdown (also the Prefect artifact), PNG plots next to the
outputs, and a few plain lines for the terminal."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from tasks.common import store
from tasks.common.storage import MANIFESTS, manifest_path, shown
from tasks.common.store import Location
from tasks.outputs.plots import PLOTS, plot_coefficients, plot_history, png

REPORTS = "reports"
HISTORY_RUNS = 20


def report_dir(root: Location, run_id: str) -> str:
    return store.join(root, REPORTS, run_id)


def summary_markdown(manifest: dict[str, Any], output_root: Location) -> str:
    """Markdown: row accounting per file, metrics, training, promotion, drift, outputs."""
    rows = manifest["rows"]
    lines = [
        f"# Sales model run `{manifest['run_id']}`: {manifest['status']}",
        "",
        f"**Rows**: {rows['in']} in, {rows['accepted']} accepted, "
        f"{rows['quarantined']} quarantined.",
        "",
        "| file | rows | accepted | quarantined | pass 1 |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {f['path']} | {f['rows']} | {f['accepted']} | {f['quarantined']} | {f['pass1']} |"
            for f in manifest["inputs"]
        ),
    ]
    if manifest["metrics"]:
        training = manifest["training"]
        lines += [
            "",
            f"**Training**: {training['epochs']} epochs, step size {training['step_size']:.4g}, "
            f"{'converged' if training['converged'] else 'NOT converged'} "
            f"({training['stop_reason']}).",
            "",
            "| target | split | rows | MSE | baseline MSE | R² | gap to optimum |",
            "|---|---|---:|---:|---:|---:|---:|",
            *(
                f"| {m['target']} | {m['split']} | {m['rows']} | {m['mse']:.6g} | "
                f"{m['baseline_mse']:.6g} | {_fixed(m['r2'], '.4f')} | {m['relative_gap']:.2e} |"
                for m in manifest["metrics"]
            ),
        ]
    if manifest.get("coefficients"):
        lines += ["", *coefficient_markdown(manifest["coefficients"])]
    lines += [f"\n**Warning**: {warning}." for warning in manifest.get("warnings", [])]
    promotion = manifest.get("promotion")
    if promotion:
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted (candidate)"
        lines += ["", f"**Promotion**: {verdict}: {promotion['reason']}."]
    drift = manifest.get("drift")
    if drift:
        flagged = [d["column"] for d in drift["columns"] if d["drifted"]]
        lines += [
            "",
            f"**Drift** against the champion's data (run `{drift['reference_run']}`, "
            f"standardized mean shift, threshold {drift['threshold']:g}): "
            + (f"**drift in {', '.join(flagged)}**." if flagged else "none flagged."),
            "",
            "| column | mean (new) | mean (champion) | shift (std) | drift |",
            "|---|---:|---:|---:|---|",
            *(
                f"| {d['column']} | {d['mean_new']:.4g} | {d['mean_reference']:.4g} | "
                f"{d['mean_shift']:.3f} | {'yes' if d['drifted'] else ''} |"
                for d in drift["columns"]
            ),
        ]
    if manifest["error"]:
        lines += ["", f"**Error**: {manifest['error']}"]
    lines += ["", f"**Outputs** under `{shown(output_root)}`:", ""]
    lines += [f"- {name}: `{path}`" for name, path in manifest["outputs"].items()]
    return "\n".join(lines) + "\n"


def coefficient_markdown(coefficients: list[dict[str, Any]]) -> list[str]:
    """The coefficient table: least-squares estimate, standard errors, interval, p-value."""
    level = coefficients[0]["confidence"]
    lines = [
        f"**Coefficients** (least squares on the train split; {level:.0%} intervals; robust SE "
        "is HC1; per feature SD: the estimate times the feature's standard deviation, the "
        "target's change for one SD of the feature, comparable across features):",
        "",
        "| target | term | estimate | per feature SD | std error | CI low | CI high | p-value "
        "| robust SE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = {}
    for c in coefficients:
        cells = [_number(c["ls_weight"]), _number(per_feature_sd(c, "ls_weight"))]
        cells += [_number(c[name]) for name in ("std_error", "ci_low", "ci_high")]
        cells += [_p(c["p_value"]), _number(c["robust_std_error"])]
        lines.append(f"| {c['target']} | {c['feature']} | " + " | ".join(cells) + " |")
        if c["note"]:
            notes[c["target"]] = c["note"]
    lines += [f"\n**No inference for {target}**: {note}." for target, note in notes.items()]
    return lines


def per_feature_sd(coefficient: dict[str, Any], name: str) -> float | None:
    """A coefficient's `name` value times its feature's standard deviation (train split): the
    change in the target for one standard deviation of the feature, comparable across features
    of different units (None for the intercept, and for runs from before it was recorded)."""
    value, scale = coefficient[name], coefficient.get("scaler_std")
    return None if value is None or scale is None else value * scale


def coefficient_lines(coefficients: list[dict[str, Any]]) -> list[str]:
    """One terminal line per coefficient: estimate, interval, p-value (or why there is none)."""
    out = []
    for c in coefficients:
        if c["ci_low"] is None:
            interval = f"no interval ({c['note']})"
        else:
            interval = (
                f"{c['confidence']:.0%} CI [{_number(c['ci_low'])}, {_number(c['ci_high'])}] "
                f"p={_p(c['p_value'])}"
            )
        out.append(f"  {c['target']} {c['feature']:<14} {_number(c['ls_weight']):>11} {interval}")
    return out


def _number(value: float | None) -> str:
    return _fixed(value, ".6g")


def _fixed(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


# Relative MSE gaps this small are the rounding of the two MSEs, not a difference of models.
ROUNDING_GAP = 1e-12


def _gap(value: float | None) -> str:
    if value is None:
        return ""
    return f"<{ROUNDING_GAP:.0e}" if abs(value) < ROUNDING_GAP else f"{value:.1e}"


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return "<1e-16" if value < 1e-16 else f"{value:.3g}"


def summary_text(manifest: dict[str, Any], output_root: Location) -> str:
    """A few plain lines for the terminal."""
    rows = manifest["rows"]
    out = [
        f"run {manifest['run_id']} {manifest['status']}: {rows['in']} rows in, "
        f"{rows['accepted']} accepted, {rows['quarantined']} quarantined",
    ]
    for m in manifest["metrics"] or []:
        out.append(
            f"  {m['target']} {m['split']:<7} rows={m['rows']:<6} mse={m['mse']:.6g} "
            f"r2={_fixed(m['r2'], '.4f')} gap_to_optimum={_gap(m['relative_gap'])}"
        )
    if manifest.get("coefficients"):
        out.append("coefficients (least squares, train split):")
        out += coefficient_lines(manifest["coefficients"])
    out += [f"warning: {warning}" for warning in manifest.get("warnings", [])]
    promotion = manifest.get("promotion")
    if promotion:
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted"
        out.append(f"{verdict}: {promotion['reason']}")
    drift = manifest.get("drift")
    if drift and any(d["drifted"] for d in drift["columns"]):
        out.append("drift: " + ", ".join(d["column"] for d in drift["columns"] if d["drifted"]))
    root = shown(output_root)
    if "report" in manifest["outputs"]:
        out.append(f"report: {store.join(root, manifest['outputs']['report'])}")
    out.append(f"outputs: {root}")
    out.append(f"manifest: {manifest_path(root, manifest['run_id'])}")
    return "\n".join(out)


def result_line(manifest: dict[str, Any]) -> str:
    """The run's result in one line, for the end of its log: rows in, accepted and
    quarantined, the holdout MSE of each target, and the promotion decision with its reason."""
    rows = manifest["rows"]
    parts = [
        f"run {manifest['run_id']} {manifest['status']}: {rows['in']} rows in, "
        f"{rows['accepted']} accepted, {rows['quarantined']} quarantined"
    ]
    holdout = [m for m in manifest["metrics"] or [] if m["split"] == "holdout"]
    if holdout:
        parts.append("holdout MSE " + ", ".join(f"{m['target']}={m['mse']:.6g}" for m in holdout))
    promotion = manifest.get("promotion")
    if promotion:
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted"
        parts.append(f"{verdict}: {promotion['reason']}")
    return "; ".join(parts)


def holdout_history(root: Location, current: dict[str, Any]) -> pd.DataFrame:
    """Holdout MSE per target of the last completed training runs (the current one included)."""
    listed = store.list_files(store.join(root, MANIFESTS))
    manifests = [
        json.loads(store.read(entry.location))
        for entry in listed
        if entry.location.endswith(".json") and not store.name_of(entry.location).startswith(".")
    ]
    runs = [m for m in manifests if m.get("kind") == "train" and m["status"] == "completed"]
    runs = [*[m for m in runs if m["run_id"] != current["run_id"]], current][-HISTORY_RUNS:]
    records = [
        {"run_id": m["run_id"], "target": r["target"], "mse": r["mse"]}
        for m in runs
        for r in m["metrics"] or []
        if r["split"] == "holdout"
    ]
    return pd.DataFrame.from_records(records, columns=["run_id", "target", "mse"])


def write_report(root: Location, manifest: dict[str, Any], plots: dict[str, bytes]) -> str:
    """Write `<root>/reports/<run_id>/`: report.md, the model's plots (drawn already, see
    tasks.outputs.plots.model_plots) and those of report_plots (drawn here unless `plots` has
    them). Returns report.md."""
    folder = report_dir(root, manifest["run_id"])
    if not {"coefficients.png", "history.png"} <= plots.keys():
        plots = {**plots, **report_plots(root, manifest)}
    for name, data in plots.items():
        store.write(store.join(folder, name), data)
    body = summary_markdown(manifest, root)
    body += "\n## Plots\n\n" + "\n".join(
        f"### {title}\n\n![{title}]({name})\n" for name, title in PLOTS.items()
    )
    report = store.join(folder, "report.md")
    store.write(report, body.encode())
    return report


def report_plots(root: Location, results: dict[str, Any]) -> dict[str, bytes]:
    """The plots of a run's results (`run_id`, `metrics`, `coefficients`, as in its manifest):
    the coefficients with their intervals and the holdout MSE history."""
    coefficients = pd.DataFrame.from_records(results["coefficients"])
    return {
        "coefficients.png": png(plot_coefficients(coefficients)),
        "history.png": png(plot_history(holdout_history(root, results))),
    }


@task(cache_policy=NONE, task_run_name="report-{manifest[run_id]}")
def report_run(manifest: dict[str, Any], root: Location) -> str:
    """Publish the run summary and the weights as artifacts: the flow run's page in the UI
    shows both. The summary carries the report's plots (a browser does not open a file:// or
    s3:// link from the UI) and names where the report and the manifest are."""
    markdown = summary_markdown(manifest, root) + "\n" + "\n".join(where_lines(manifest, root))
    markdown += embedded_plots(manifest, root)
    create_markdown_artifact(
        markdown=markdown, key="sales-model-run", description="Training run summary"
    )
    create_table_artifact(
        table=weights_artifact(manifest["coefficients"]),
        key="sales-model-weights",
        description=f"Weights of run {manifest['run_id']} (raw scale, 6 significant digits)",
    )
    return markdown


def where_lines(manifest: dict[str, Any], root: Location) -> list[str]:
    """Where the run's report and manifest are, as text to copy."""
    lines = []
    if "report" in manifest["outputs"]:
        lines.append(f"**Report**: `{store.join(shown(root), manifest['outputs']['report'])}`  ")
    lines.append(f"**Manifest**: `{manifest_path(shown(root), manifest['run_id'])}`")
    return lines


def embedded_plots(manifest: dict[str, Any], root: Location) -> str:
    """The report's plots as images inside the markdown (data URIs), read back from the report
    folder; nothing when the run wrote no report, a line saying why when they cannot be read."""
    if "report" not in manifest["outputs"]:
        return ""
    folder = report_dir(root, manifest["run_id"])
    images = []
    try:
        for name, title in PLOTS.items():
            data = base64.b64encode(store.read(store.join(folder, name))).decode()
            images.append(f"### {title}\n\n![{title}](data:image/png;base64,{data})\n")
    except Exception as exc:  # the run is committed: a summary without its plots, not a failure
        return f"\n_The plots could not be read back ({exc}); the report has them._\n"
    return "\n## Plots\n\n" + "\n".join(images)


# The weights artifact's columns, in the order an analyst reads them: which coefficient, its
# estimate and interval, its p-value, then the errors, the trained weight and the note.
ARTIFACT_COLUMNS = (
    "target", "feature", "ls_weight", "ci_low", "ci_high", "p_value", "std_error",
    "robust_std_error", "weight", "confidence", "note",
)  # fmt: skip


def weights_artifact(coefficients: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The coefficient records for the UI's table: columns in ARTIFACT_COLUMNS' order, numbers
    to 6 significant digits (the tables keep every digit)."""
    return [
        {name: _significant(c[name]) for name in ARTIFACT_COLUMNS if name in c}
        for c in coefficients
    ]


def _significant(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(format(value, ".6g"))
    return value
