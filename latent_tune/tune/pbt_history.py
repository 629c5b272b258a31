"""The PBT exploit/explore history of an experiment, one row per step, by trial id.

Why: Ray's pbt_global.txt names trials by their tags and holds only the donor's and the new
config; the lab wants to follow one trial through its steps and see what each step changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["pbt_history"]


def _trial_of_tag(tag: Any, ids: Mapping[int, str]) -> str:
    """A trial's Tune experiment tag (`3_lr=0.001,...`) -> its trial id (`ab12c_00003`).

    PBT logs tags, not ids; with Ray's variant generator (the only searcher PBT takes) the
    tag's leading number is the trial's counter, which is also its id's suffix."""
    head = str(tag).split("_", 1)[0]
    return ids.get(int(head), head) if head.isdigit() else str(tag)


def pbt_history(
    exp_dir: Path, params: Iterable[str], start_values: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """The PBT exploit/explore log (pbt_global.txt) as a table, one row per exploit step.

    Columns: trial_id (the target), donor_trial_id, target_iteration / donor_iteration (Tune's
    training_iteration of each when it happened), and per parameter `<p>.old` (the target's
    value before the step), `<p>.donor` (the donor's value it cloned) and `<p>.new` (after
    explore). Ray logs only the donor's and the new config: the target's old value is its
    value after its previous step, or before any step its sampled value (`start_values`:
    trial id -> parameter -> value; its keys are the experiment's trial ids).
    """
    path = Path(exp_dir) / "pbt_global.txt"
    params = list(params)
    if not path.is_file():
        return pd.DataFrame()
    ids = {int(t.rsplit("_", 1)[-1]): t for t in start_values if _counter(t)}
    current = {t: dict(v) for t, v in start_values.items()}
    rows: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        target_tag, donor_tag, target_it, donor_it, donor_cfg, new_cfg = json.loads(line)
        target = _trial_of_tag(target_tag, ids)
        row: dict[str, Any] = {
            "step": len(rows),
            "trial_id": target,
            "donor_trial_id": _trial_of_tag(donor_tag, ids),
            "target_iteration": target_it,
            "donor_iteration": donor_it,
        }
        old = current.get(target, {})
        for p in params:
            row[f"{p}.old"] = old.get(p)
            row[f"{p}.donor"] = donor_cfg.get(p)
            row[f"{p}.new"] = new_cfg.get(p)
        current[target] = {p: new_cfg.get(p) for p in params}
        rows.append(row)
    return pd.DataFrame(rows)


def _counter(trial_id: str) -> bool:
    return trial_id.rsplit("_", 1)[-1].isdigit() and "_" in trial_id
