"""One self-contained HTML page per search (or several side by side), made to be shared.

Why a page and not TensorBoard: TensorBoard is for browsing a live run; people pass around a
file. Everything is inside the file (figures as base64 `data:` PNGs, inline CSS, no scripts,
no links to fetch), so it opens the same from a mail attachment or a lab wiki.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from latent_tune.atomic import atomic_write_text
from latent_tune.tune.experiment import Experiment, load_experiment
from latent_tune.tune.importance import FEW_TRIALS, Importances, compute_importances
from latent_tune.tune.ranked_table import param_labels
from latent_tune.tune.report_figures import (
    asha_rungs,
    importance_bars,
    learning_curves,
    objective_vs_params,
    parallel_coordinates,
    pbt_lineage,
)

__all__ = ["render_html", "write_report_html"]

TOP_CURVES = 6  # learning curves of this many best trials
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #aaa;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}
td.t{text-align:left}tr.noise td{background:#eef7ee}
.warning{background:#fff3cd;border:1px solid #d4a800;padding:0.6em 1em;margin:0.8em 0}
.note{color:#555;font-size:13px}pre{background:#f6f6f6;padding:0.6em;overflow:auto;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:0.4em 0}
"""


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: Sequence[str] = ()) -> str:
    """An HTML table; text cells (non-numbers) are left-aligned; `css` gives row classes."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(
            f"<td{'' if isinstance(v, int | float) else ' class=t'}>{_esc(_fmt(v))}</td>"
            for v in row
        )
        cls = f' class="{css[i]}"' if i < len(css) and css[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _value(v: Any) -> Any:
    """Numpy scalars -> Python numbers (so the table aligns them)."""
    return v.item() if hasattr(v, "item") else v


def _int(v: Any) -> Any:
    return "" if v is None or pd.isna(v) else int(v)


def _verified_cells(row: pd.Series | None) -> list[Any]:
    if row is None:
        return ["", "", "", ""]
    mean, sd = _fmt(_value(row.get("best_mean"))), _fmt(_value(row.get("best_sd")))
    n = row.get("n")
    diff = _fmt(_value(row.get("diff_mean")))
    lo, hi = _fmt(_value(row.get("diff_lo"))), _fmt(_value(row.get("diff_hi")))
    noise = "within noise" if bool(row.get("within_noise", False)) else ""
    rank = row.get("verified_rank")
    return [
        f"{mean} ± {sd}" + (f" (n={_int(n)})" if _int(n) != "" else ""),
        f"{diff} [{lo}, {hi}]" if diff else "",
        noise,
        _int(rank),
    ]


def ranked_table(trials: pd.DataFrame, metric: str, params: Sequence[str], verified: Any) -> str:
    """The ranked trials; with a verification, its mean +- sd and difference to the base."""
    labels = param_labels(params)
    cols = ["rank", "trial_id", "status", "epochs", f"best_{metric}", "best_epoch"]
    cols += [f"final_{metric}", *params]
    if "experiment" in trials.columns:
        cols.insert(1, "experiment")
    cols = [c for c in cols if c in trials.columns]
    header = [labels.get(c, c) for c in cols]
    by_id: dict[str, pd.Series] = {}
    if verified is not None:
        header += ["verified best (mean ± sd)", "vs base: diff [95% CI]", "noise", "verified rank"]
        cand = verified[verified["role"].astype(str) != "base"]
        by_id = {str(r["trial_id"]): r for _, r in cand.iterrows()}
    rows, css = [], []
    for _, r in trials.iterrows():
        cells = [_value(r[c]) for c in cols]
        v = by_id.get(str(r["trial_id"]))
        if verified is not None:
            cells += _verified_cells(v)
        rows.append(cells)
        css.append("noise" if v is not None and bool(v.get("within_noise", False)) else "")
    return _table(header, rows, css)


def _verified_section(exp: Experiment) -> str:
    v = exp.verified
    if v is None:
        return ""
    v = v.sort_values(["verified_rank"] if "verified_rank" in v.columns else ["trial_id"])
    header = ["trial_id", "role", "search rank", "search value", "verified best (mean ± sd)"]
    header += ["vs base: diff [95% CI]", "noise", "verified rank", "test final (mean ± sd)"]
    rows = []
    for _, r in v.iterrows():
        test = ""
        if "test_final_mean" in r and r["test_final_mean"] == r["test_final_mean"]:
            test = f"{_fmt(_value(r['test_final_mean']))} ± {_fmt(_value(r.get('test_final_sd')))}"
        sr = r.get("search_rank")
        rows.append(
            [
                r["trial_id"],
                r["role"],
                _int(sr),
                _value(r.get("search_value")),
                *_verified_cells(r),
                test,
            ]
        )
    css = ["noise" if bool(r.get("within_noise", False)) else "" for _, r in v.iterrows()]
    return (
        "<h3>Verification (each configuration retrained with several seeds)</h3>"
        '<p class="note">Differences are paired across seeds against the base recipe; shaded '
        "rows are within noise of the verified winner.</p>" + _table(header, rows, css)
    )


def _seed_leaves(tree: Any, prefix: str = "") -> list[str]:
    """`path seed` of every `seed` leaf of a config tree."""
    if not isinstance(tree, dict):
        return []
    out = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if k == "seed" and not isinstance(v, dict):
            out.append(f"{path} {v}")
        out += _seed_leaves(v, f"{path}.")
    return out


def _seeds(exp: Experiment) -> str:
    parts = []
    searcher = exp.space.get("searcher") or {}
    if isinstance(searcher, dict) and "seed" in searcher:
        parts.append(f"searcher seed {searcher['seed']}")
    try:
        best = yaml.safe_load(exp.best_config or "") or {}
    except yaml.YAMLError:
        best = {}
    parts += [f"best trial's {s}" for s in _seed_leaves(best)]
    if exp.verified is not None and "seeds" in exp.verified.columns:
        seeds = sorted({int(s) for ss in exp.verified["seeds"] if ss is not None for s in ss})
        parts.append(f"verification seeds {seeds}")
    return ", ".join(parts) or "not recorded"


def _provenance(exp: Experiment) -> str:
    recorded = "not recorded in the experiment dir (no space.yaml); ranges inferred from values"
    items = [
        ("experiment dir", str(exp.path)),
        ("git commit", f"{exp.commit or 'unknown'} ({exp.commit_source})"),
        ("objective", f"{exp.metric} ({exp.mode})"),
        ("search space", exp.space_source or recorded),
        ("seeds", _seeds(exp)),
    ]
    out = "<h3>Provenance</h3>" + _table(["what", "value"], items)
    if exp.space_text:
        out += f"<details open><summary>search space</summary><pre>{_esc(exp.space_text)}</pre>"
        out += "</details>"
    if exp.best_config:
        out += "<details><summary>config of the best trial (best/config.yaml: base config with "
        out += (
            f"the space's overrides and the trial's values)</summary><pre>{_esc(exp.best_config)}"
        )
        out += "</pre></details>"
    return out


def _importance_section(exp: Experiment, imp: Importances) -> str:
    labels = param_labels(exp.params)
    out = "<h3>Hyperparameter importances</h3>"
    if imp.few_trials:
        out += (
            f'<div class="warning">Few trials: only {imp.n_trials} trials were scored (fewer '
            f"than {FEW_TRIALS}); importances this thin are a hint, not a ranking.</div>"
        )
    out += (
        '<p class="note">Computed by Optuna (fANOVA, random-forest based, seed 0; PED-ANOVA as a '
        "cross-check) on an in-memory study of every trial, scored by its best objective up to "
        f"epoch {imp.budget} (the largest epoch every trial reached, so trials stopped early "
        f"compare fairly). {imp.n_excluded} trial(s) had no usable objective by then.</p>"
    )
    out += "".join(f'<p class="note">{_esc(n)}</p>' for n in imp.notes)
    rows = [
        [labels.get(p, p), imp.scales.get(p, ""), imp.fanova.get(p), imp.ped_anova.get(p)]
        for p in sorted(imp.params, key=lambda p: -imp.fanova.get(p, 0.0))
    ]
    out += _table(["parameter", "scale", "fANOVA", "PED-ANOVA"], rows)
    if imp.fanova:
        out += _img(importance_bars(imp.fanova, labels), "hyperparameter importances")
    return out


def _rungs(exp: Experiment) -> list[int]:
    sch = exp.space.get("scheduler") or {}
    stopped = (
        exp.trials[exp.trials.get("status") == "stopped_early"] if "status" in exp.trials else []
    )
    if isinstance(sch, dict) and sch.get("type") == "asha":
        gp, rf = int(sch.get("grace_period", 1)), float(sch.get("reduction_factor", 3.0))
        top = int(sch.get("max_t") or exp.results["epoch"].max())
        out, r = [], float(gp)
        while r <= top and len(out) < 50:
            out.append(round(r))
            r *= rf
        return out
    return sorted({int(e) for e in stopped["epochs"]}) if len(stopped) else []


def _schedule_section(exp: Experiment, budget: int | None) -> str:
    sch = exp.space.get("scheduler") or {}
    out = ""
    is_asha = (isinstance(sch, dict) and sch.get("type") == "asha") or (
        "status" in exp.trials and (exp.trials["status"] == "stopped_early").any()
    )
    max_epochs = int(exp.results["epoch"].max())
    if is_asha and "epochs" in exp.trials:
        out += "<h3>ASHA rungs: where trials were stopped</h3>"
        out += _img(asha_rungs(exp.trials, _rungs(exp), max_epochs, budget=budget), "ASHA rungs")
        stopped = exp.trials[exp.trials["status"] == "stopped_early"]
        rows = [
            [int(e), len(g), ", ".join(map(str, g["trial_id"]))]
            for e, g in stopped.groupby("epochs")
        ]
        out += _table(["stopped at epoch", "trials", "trial ids"], rows)
    if not exp.pbt.empty and {"target_trial", "donor_trial"} <= set(exp.pbt.columns):
        out += "<h3>PBT lineage: who copied whom</h3>"
        out += _img(pbt_lineage(exp.pbt, len(exp.trials), max_epochs), "PBT lineage")
        cols = ["step", "target_trial", "target_iteration", "donor_trial", "donor_iteration"]
        cols = [c for c in cols if c in exp.pbt.columns] + [
            c for c in exp.params if c in exp.pbt.columns
        ]
        rows = [[_value(r[c]) for c in cols] for _, r in exp.pbt.head(200).iterrows()]
        out += _table(cols, rows)
    return out


def _experiment_section(exp: Experiment) -> str:
    imp = compute_importances(
        exp.results,
        exp.metric,
        exp.mode,
        exp.params,
        space_text=exp.space_text,
        statuses=exp.statuses,
    )
    labels = param_labels(exp.params)
    counts = exp.trials["status"].value_counts().to_dict() if "status" in exp.trials else {}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    out = f'<h2 id="{_esc(exp.name)}">{_esc(exp.name)}</h2>'
    out += f"<p>{len(exp.trials)} trials ({_esc(summary)}); objective <b>{_esc(exp.metric)}</b>"
    out += f" ({_esc(exp.mode)})</p>"
    out += "<h3>Ranked trials</h3>" + ranked_table(exp.trials, exp.metric, exp.params, exp.verified)
    out += _verified_section(exp)
    out += _importance_section(exp, imp)
    table = imp.table
    if not table.empty and exp.params:
        if "status" in exp.trials:
            table = table.assign(status=table["trial_id"].map(exp.statuses))
        ylabel = f"best {exp.metric} up to epoch {imp.budget}"
        out += "<h3>Objective vs each hyperparameter</h3>"
        out += _img(
            objective_vs_params(
                table, exp.metric, exp.params, scales=imp.scales, labels=labels, ylabel=ylabel
            ),
            "objective vs hyperparameters",
        )
        out += "<h3>Parallel coordinates</h3>"
        out += _img(
            parallel_coordinates(
                table, exp.metric, exp.params, scales=imp.scales, labels=labels, mode=exp.mode
            ),
            "parallel coordinates",
        )
    top = [str(t) for t in exp.trials["trial_id"].head(TOP_CURVES)]
    out += f"<h3>Learning curves of the top {len(top)} trials</h3>"
    out += _img(learning_curves(exp.results, top, exp.metric), "learning curves")
    out += _schedule_section(exp, imp.budget)
    return out + _provenance(exp)


def _combined(exps: Sequence[Experiment]) -> str:
    metrics = {e.metric for e in exps}
    metric, mode = exps[0].metric, exps[0].mode
    frames = [e.trials.drop(columns=["rank"]).assign(experiment=e.name) for e in exps]
    df = pd.concat(frames, ignore_index=True)
    col = f"best_{metric}"
    if len(metrics) == 1:
        df = df.sort_values(col, ascending=mode == "min", na_position="last")
    df = df.reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    params = list(dict.fromkeys(p for e in exps for p in e.params))
    note = "" if len(metrics) == 1 else '<p class="warning">Different objectives: not ranked.</p>'
    return (
        "<h2>All experiments, ranked together</h2>" + note + ranked_table(df, metric, params, None)
    )


def render_html(exps: Sequence[Experiment], title: str | None = None) -> str:
    """The whole page as one string."""
    title = title or "latent_tune report: " + ", ".join(e.name for e in exps)
    toc = " | ".join(f'<a href="#{_esc(e.name)}">{_esc(e.name)}</a>' for e in exps)
    body = f"<h1>{_esc(title)}</h1><p>{toc}</p>"
    if len(exps) > 1:
        body += _combined(exps)
    body += "".join(_experiment_section(e) for e in exps)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report_html(
    exp_dirs: list[Path],
    out: Path,
    *,
    title: str | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> Path:
    """Read every experiment first, then write the page atomically (bad input: nothing written).

    `metric` (with `mode`) overrides the objective each experiment recorded.
    """
    exps = [load_experiment(Path(d), metric, mode) for d in exp_dirs]
    text = render_html(exps, title)
    atomic_write_text(Path(out), text)
    return Path(out)
