"""The NIST StRD linear least-squares datasets (tests/data/strd) and the log relative error
(LRE) by which statistical software is judged on them: the number of digits an estimate shares
with the certified value."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STRD = Path(__file__).resolve().parent / "data" / "strd"
# NIST certifies 15 significant digits: agreement past that is not measured.
CERTIFIED_DIGITS = 15.0
INTERCEPT = "(intercept)"
NAMES = (
    "Norris",
    "Pontius",
    "Filip",
    "Longley",
    "Wampler1",
    "Wampler2",
    "Wampler3",
    "Wampler4",
    "Wampler5",
)


@dataclass(frozen=True)
class Dataset:
    """One StRD dataset: its CSV, its model's columns and what NIST certifies for it (estimate
    and std_dev keyed by term: each feature, then '(intercept)')."""

    name: str
    path: Path
    features: tuple[str, ...]
    target: str
    estimate: Mapping[str, float]
    std_dev: Mapping[str, float]
    residual_std_dev: float
    r_squared: float
    difficulty: str

    @property
    def terms(self) -> tuple[str, ...]:
        """The terms in the weights table's order: features, then the intercept."""
        return (*self.features, INTERCEPT)

    @property
    def exact_fit(self) -> bool:
        """Whether the data lie exactly on the model (every certified std_dev is 0)."""
        return not any(self.std_dev.values())


@cache
def _certified() -> dict:
    return json.loads((STRD / "certified.json").read_text())


def load(name: str) -> Dataset:
    """The dataset `name` (one of NAMES) with its certified values."""
    entry = _certified()[name]
    return Dataset(
        name=name,
        path=STRD / f"{name}.csv",
        features=tuple(entry["features"]),
        target=entry["target"],
        estimate=entry["estimate"],
        std_dev=entry["std_dev"],
        residual_std_dev=entry["residual_std_dev"],
        r_squared=entry["r_squared"],
        difficulty=entry["difficulty"],
    )


def lre(estimate: float | None, certified: float) -> float:
    """Digits `estimate` shares with `certified`: -log10 of the relative error (of the
    absolute error where the certified value is 0), capped at 15 (and 15 when equal); negative
    when even the first digit is wrong; -inf for a missing or non-finite estimate."""
    if estimate is None or not math.isfinite(estimate):
        return -math.inf
    error = abs(estimate - certified)
    if error == 0:
        return CERTIFIED_DIGITS
    if certified != 0:
        error /= abs(certified)
    return min(CERTIFIED_DIGITS, -math.log10(error))


def lres(estimates: Mapping[str, float], certified: Mapping[str, float]) -> dict[str, float]:
    """The LRE of each certified term (every one must be estimated), rounded to 0.1 for
    messages."""
    return {term: round(lre(estimates[term], value), 1) for term, value in certified.items()}


def worst_lre(estimates: Mapping[str, float], certified: Mapping[str, float]) -> float:
    """The smallest LRE over the certified terms: a vector is as good as its worst term."""
    return min(lre(estimates[term], value) for term, value in certified.items())
