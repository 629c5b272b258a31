"""Hyperparameter importances of a finished search, computed by Optuna's evaluators.

Why a common epoch budget: ASHA stops weak trials after a few epochs, so their best objective
comes from far fewer epochs than a finished trial's; ranking parameters on those values would
credit whatever the survivors share. Every trial is therefore scored by its best objective up to
the largest epoch that every (non-failed) trial reached, and the trials become an in-memory
Optuna study whose distributions come from the search-space file (so log scales and integer or
categorical parameters are modelled as they were sampled).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import (
    FanovaImportanceEvaluator,
    PedAnovaImportanceEvaluator,
    get_param_importances,
)
from pydantic import ValidationError

from latent_tune.tune.space import DistEntry

__all__ = [
    "FEW_TRIALS",
    "Importances",
    "build_study",
    "common_budget",
    "compute_importances",
    "space_distributions",
    "valid_rows",
]

FEW_TRIALS = 10  # below this many scored trials the importances are flagged as unreliable


@dataclass
class Importances:
    """fANOVA (and PED-ANOVA where it works) importances of every tuned parameter."""

    params: list[str]
    budget: int | None  # the epoch budget every trial was scored at
    n_trials: int  # trials in the study
    n_excluded: int  # trials without a usable objective up to the budget
    fanova: dict[str, float] = field(default_factory=dict)
    ped_anova: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # the scored row of each trial
    scales: dict[str, str] = field(default_factory=dict)  # log / linear / categorical

    @property
    def few_trials(self) -> bool:
        return self.n_trials < FEW_TRIALS


def valid_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows with a finite, unpenalised objective (the rows a best value may come from)."""
    if metric not in results.columns or results.empty:
        return results.iloc[0:0]
    vals = pd.to_numeric(results[metric], errors="coerce")
    ok = vals.map(lambda v: bool(pd.notna(v) and math.isfinite(v)))
    if "penalised" in results.columns:
        ok &= ~results["penalised"].fillna(False).astype(bool)
    out = results[ok].copy()
    out[metric] = pd.to_numeric(out[metric])
    return out


def common_budget(results: pd.DataFrame, statuses: Mapping[str, str] | None = None) -> int | None:
    """The largest epoch every trial reached; failed trials count only when nothing else ran
    (one trial crashing at epoch 1 should not shrink everyone's budget to one epoch)."""
    if results.empty or "epoch" not in results.columns:
        return None
    reached = results.groupby("trial_id")["epoch"].max()
    statuses = statuses or {}
    healthy = reached[[statuses.get(str(t)) != "ERROR" for t in reached.index]]
    use = healthy if not healthy.empty else reached
    return int(use.min())


def _at_budget(rows: pd.DataFrame, metric: str, mode: str, budget: int | None) -> pd.DataFrame:
    """Per trial, the row of its best objective among epochs <= budget."""
    if budget is not None:
        rows = rows[rows["epoch"] <= budget]
    if rows.empty:
        return rows
    rows = rows.sort_values([metric, "epoch"], ascending=[mode == "min", True])
    return rows.drop_duplicates("trial_id", keep="first").set_index("trial_id")


def _entry_distribution(entry: DistEntry) -> BaseDistribution:
    if entry.choice is not None or entry.grid is not None:
        values = entry.choice if entry.choice is not None else entry.grid
        return CategoricalDistribution([str(v) for v in values or []])
    if entry.loguniform is not None:
        return FloatDistribution(float(entry.loguniform[0]), float(entry.loguniform[1]), log=True)
    if entry.uniform is not None:
        return FloatDistribution(float(entry.uniform[0]), float(entry.uniform[1]))
    lo, hi = entry.randint or (0, 1)
    return IntDistribution(int(lo), max(int(lo), int(hi) - 1))  # randint's high is exclusive


def _inferred(values: pd.Series) -> BaseDistribution:
    """A distribution from the observed values (no readable space file)."""
    nums = pd.to_numeric(values, errors="coerce")
    if nums.notna().all() and not values.map(lambda v: isinstance(v, bool | str)).any():
        lo, hi = float(nums.min()), float(nums.max())
        if (nums == nums.round()).all() and values.map(lambda v: not isinstance(v, float)).all():
            return IntDistribution(int(lo), int(hi))
        return FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 10)
    return CategoricalDistribution(sorted({str(v) for v in values}))


def _covering(dist: BaseDistribution, values: pd.Series) -> BaseDistribution:
    """Widen a space distribution to the observed values (PBT explores up to its bounds)."""
    if isinstance(dist, CategoricalDistribution):
        extra = sorted({str(v) for v in values} - set(map(str, dist.choices)))
        return CategoricalDistribution([*map(str, dist.choices), *extra])
    nums = pd.to_numeric(values, errors="coerce").dropna()
    if nums.empty:
        return dist
    lo, hi = min(dist.low, float(nums.min())), max(dist.high, float(nums.max()))
    if isinstance(dist, IntDistribution):
        return IntDistribution(math.floor(lo), math.ceil(hi))
    return FloatDistribution(lo, hi, log=dist.log)


def space_distributions(
    space_text: str | None, params: Iterable[str], observed: pd.DataFrame
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Optuna distributions of each parameter: from the space file's `space:` entries where it
    parses, else inferred from the observed values; returns (distributions, notes)."""
    entries: dict[str, Any] = {}
    notes: list[str] = []
    if space_text:
        try:
            raw = yaml.safe_load(space_text)
            entries = dict((raw or {}).get("space") or {}) if isinstance(raw, dict) else {}
        except yaml.YAMLError:
            notes.append("the search-space text does not parse; distributions were inferred")
    out: dict[str, BaseDistribution] = {}
    for p in params:
        values = observed[p].dropna() if p in observed.columns else pd.Series([], dtype=object)
        try:
            dist = _entry_distribution(DistEntry.model_validate(entries[p]))
        except (KeyError, ValidationError, TypeError, ValueError):
            dist = _inferred(values) if len(values) else CategoricalDistribution(["?"])
            if space_text:
                notes.append(f"{p}: not in the search space; its range was inferred")
        out[p] = _covering(dist, values)
    return out, notes


def _scale(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "categorical"
    return "log" if getattr(dist, "log", False) else "linear"


def _internal(dist: BaseDistribution, v: Any) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return str(v)
    if isinstance(dist, IntDistribution):
        return round(float(v))
    return float(v)


def build_study(
    table: pd.DataFrame, metric: str, mode: str, dists: Mapping[str, BaseDistribution]
) -> optuna.Study:
    """An in-memory study with one COMPLETE trial per row of `table` (params + objective)."""
    direction = "minimize" if mode == "min" else "maximize"
    study = optuna.create_study(direction=direction)
    for _, row in table.iterrows():
        params = {p: _internal(d, row[p]) for p, d in dists.items()}
        trial = optuna.trial.create_trial(
            params=params, distributions=dict(dists), value=float(row[metric])
        )
        study.add_trial(trial)
    return study


def _evaluate(study: optuna.Study, evaluator: Any, params: list[str]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA is experimental and says so on every call
        got = get_param_importances(study, evaluator=evaluator, params=params, normalize=True)
    return {p: float(got.get(p, 0.0)) for p in params}


def compute_importances(
    results: pd.DataFrame,
    metric: str,
    mode: str,
    params: list[str],
    *,
    space_text: str | None = None,
    statuses: Mapping[str, str] | None = None,
) -> Importances:
    """Importances of `params` for `metric`, every trial scored at the common epoch budget."""
    budget = common_budget(results, statuses)
    rows = _at_budget(valid_rows(results, metric), metric, mode, budget)
    n_all = int(results["trial_id"].nunique()) if "trial_id" in results.columns else 0
    present = [p for p in params if p in rows.columns]
    if present:
        rows = rows.dropna(subset=present)
    imp = Importances(list(params), budget, len(rows), n_all - len(rows))
    dists, imp.notes = space_distributions(space_text, params, results)
    imp.table = rows.reset_index()
    imp.scales = {p: _scale(d) for p, d in dists.items()}
    if len(rows) < 2 or len(present) < len(params):
        imp.notes.append("fewer than 2 trials with every parameter and a usable objective")
        return imp
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = build_study(rows.reset_index(), metric, mode, dists)
    varied = [p for p, d in dists.items() if not d.single()]
    if not varied:
        imp.notes.append("no parameter varied across the scored trials")
        return imp
    if rows[metric].nunique() < 2:
        imp.notes.append("every scored trial has the same objective: nothing to attribute")
        return imp
    for name, evaluator in (
        ("fANOVA", FanovaImportanceEvaluator(seed=0)),
        ("PED-ANOVA", PedAnovaImportanceEvaluator()),
    ):
        try:
            got = {p: 0.0 for p in params} | _evaluate(study, evaluator, varied)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            imp.notes.append(f"{name} not available: {' '.join(str(exc).split())[:200]}")
            continue
        if name == "fANOVA":
            imp.fanova = got
        else:
            imp.ped_anova = got
    return imp
