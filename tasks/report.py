"""Report: a human summary of a run, as Prefect artifacts and as text for the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from tasks.storage import manifest_path


def summary_markdown(manifest: dict[str, Any], output_root: Path) -> str:
    """Markdown: row accounting per file, metrics per target and split, training, outputs."""
    rows = manifest["rows"]
    lines = [
        f"# Sales model run `{manifest['run_id']}`: {manifest['status']}",
        "",
        f"**Rows**: {rows['in']} in, {rows['accepted']} accepted, "
        f"{rows['quarantined']} quarantined.",
        "",
        "| file | rows | accepted | quarantined |",
        "|---|---:|---:|---:|",
        *(
            f"| {f['path']} | {f['rows']} | {f['accepted']} | {f['quarantined']} |"
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
                f"{m['baseline_mse']:.6g} | {m['r2']:.4f} | {m['relative_gap']:.2e} |"
                for m in manifest["metrics"]
            ),
        ]
    promotion = manifest.get("promotion")
    if promotion:
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted (candidate)"
        lines += ["", f"**Promotion**: {verdict}: {promotion['reason']}."]
    if manifest["error"]:
        lines += ["", f"**Error**: {manifest['error']}"]
    lines += ["", f"**Outputs** under `{output_root.resolve()}`:", ""]
    lines += [f"- {name}: `{path}`" for name, path in manifest["outputs"].items()]
    return "\n".join(lines) + "\n"


def summary_text(manifest: dict[str, Any], output_root: Path) -> str:
    """A few plain lines for the terminal."""
    rows = manifest["rows"]
    out = [
        f"run {manifest['run_id']} {manifest['status']}: {rows['in']} rows in, "
        f"{rows['accepted']} accepted, {rows['quarantined']} quarantined",
    ]
    for m in manifest["metrics"] or []:
        out.append(
            f"  {m['target']} {m['split']:<7} rows={m['rows']:<6} mse={m['mse']:.6g} "
            f"r2={m['r2']:.4f} gap_to_optimum={m['relative_gap']:.1e}"
        )
    promotion = manifest.get("promotion")
    if promotion:
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted"
        out.append(f"{verdict}: {promotion['reason']}")
    out.append(f"outputs: {output_root.resolve()}")
    out.append(f"manifest: {manifest_path(output_root.resolve(), manifest['run_id'])}")
    return "\n".join(out)


@task(cache_policy=NONE)
def report_run(manifest: dict[str, Any], weights: pd.DataFrame, output_root: str) -> str:
    """Publish the run summary (markdown) and the weights (table) as Prefect artifacts."""
    markdown = summary_markdown(manifest, Path(output_root))
    create_markdown_artifact(
        markdown=markdown, key="sales-model-run", description="Training run summary"
    )
    create_table_artifact(
        table=weights.astype(object).where(weights.notna(), None).to_dict(orient="records"),
        key="sales-model-weights",
        description=f"Weights of run {manifest['run_id']} (raw scale)",
    )
    return markdown
