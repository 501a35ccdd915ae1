"""Train: the run's model from pass 1's product, by the configured solver, as a Prefect task.

`direct` descends on the training rows, `moments` on their QR factor (tasks/model/descent.py,
the torch code, imported when a run trains: importing a flow does not load torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from schemas.params import AUTO_DIRECT_MAX_ROWS, RunConfig
from tasks.common.errors import DataQualityError
from tasks.ingest.scan import Scan, training_rows

if TYPE_CHECKING:
    from tasks.model.descent import FitResult


def fit_scan(
    scan: Scan, config: RunConfig, on_epoch: Callable[[int, float], None] | None = None
) -> FitResult:
    """Fit the model on a run's training rows with the configured solver (`auto`: `direct`
    while the training rows are few, the sufficient statistics above)."""
    if scan.train.n == 0:
        raise DataQualityError(
            f"all {scan.accepted} accepted rows fell in the holdout split; lower holdout_fraction"
        )
    import torch

    from tasks.model.descent import fit_from_moments, fit_linear_regression
    from tasks.model.tensors import DTYPES

    options = {"lr": config.lr, "max_epochs": config.max_epochs, "tol": config.tol}
    if solver_for(config, scan.train.n) == "moments":
        return fit_from_moments(scan.train, seed=config.seed, on_epoch=on_epoch, **options)
    X, y = training_rows(scan, config)
    return fit_linear_regression(
        torch.from_numpy(X), torch.from_numpy(y), dtype=DTYPES[config.dtype], seed=config.seed,
        on_epoch=on_epoch, **options,
    )  # fmt: skip


def solver_for(config: RunConfig, train_rows: int) -> str:
    """The solver a run uses: as configured, `auto` resolved by the number of training rows."""
    if config.solver != "auto":
        return config.solver
    return "direct" if train_rows <= AUTO_DIRECT_MAX_ROWS else "moments"


@task(cache_policy=NONE, task_run_name="fit-{config.solver}")
def train_model(scan: Scan, config: RunConfig, log_every: int = 500) -> FitResult:
    """fit_scan as a task, logging the loss and updating a Prefect progress artifact every
    `log_every` epochs."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="Gradient descent: share of max_epochs")

    def log_progress(epoch: int, loss: float) -> None:
        if epoch % log_every == 0:
            logger.info("epoch %d: train MSE %.6g", epoch, loss)
            update_progress_artifact(progress, 100.0 * epoch / config.max_epochs)

    fit = fit_scan(scan, config, log_progress)
    logger.info(
        "%s solver stopped after %d epochs (%s), step size %.4g, final train MSE %.6g",
        solver_for(config, scan.train.n),
        fit.epochs,
        fit.stop_reason,
        fit.lr,
        fit.loss_history[-1],
    )
    update_progress_artifact(progress, 100.0)
    return fit
