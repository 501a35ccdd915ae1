"""Path confinement: every path that arrives as a parameter is resolved (symlinks followed) and
must lie under a configured root, so `--param data=/etc/passwd` or a symlink out of data/ is
refused before anything is read.

Roots come from SALES_MODEL_DATA_ROOTS and SALES_MODEL_OUTPUT_ROOTS (os.pathsep-separated);
by default `data/` and `output/` under the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from tasks.errors import PipelineError

DATA_ROOTS_ENV = "SALES_MODEL_DATA_ROOTS"
OUTPUT_ROOTS_ENV = "SALES_MODEL_OUTPUT_ROOTS"
DEFAULT_DATA_ROOTS = ("data",)
DEFAULT_OUTPUT_ROOTS = ("output",)


def configured_roots(env: str, defaults: tuple[str, ...]) -> list[Path]:
    """The roots named by an environment variable, or the defaults, resolved."""
    value = os.environ.get(env, "")
    items = [item for item in value.split(os.pathsep) if item] or list(defaults)
    return [Path(item).resolve() for item in items]


def data_roots() -> list[Path]:
    return configured_roots(DATA_ROOTS_ENV, DEFAULT_DATA_ROOTS)


def output_roots() -> list[Path]:
    return configured_roots(OUTPUT_ROOTS_ENV, DEFAULT_OUTPUT_ROOTS)


def confine(path: str | Path, roots: list[Path], parameter: str) -> Path:
    """Return `path` unchanged if it resolves under one of `roots`; else raise PipelineError
    naming the parameter. Nothing at the path is opened."""
    resolved = Path(path).resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        return Path(path)
    env = OUTPUT_ROOTS_ENV if parameter == "output" else DATA_ROOTS_ENV
    allowed = ", ".join(str(root) for root in roots)
    raise PipelineError(
        f"parameter {parameter}: '{path}' is outside the allowed folders ({allowed}); "
        f"set {env} to allow another"
    )
