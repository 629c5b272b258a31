"""The shareable HTML report: self-contained, every figure a decodable PNG, tables complete.

One real ASHA search (tiny recipe, local Ray) supplies a realistic experiment dir; synthetic
dirs written here cover what a tiny search cannot show cheaply: PBT lineage, a verification
table, enough trials for importances to mean something, and bad input.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import shutil
import tempfile
import unittest
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import ray
import yaml
from PIL import Image

from latent_tune.report import main as report_main
from latent_tune.tune.cli import start_local_ray
from latent_tune.tune.html_report import write_report_html
from latent_tune.tune.importance import common_budget, compute_importances
from latent_tune.tune.results import rank_trials
from tests.ray_cluster import QUIET
from tests.tiny_search import run_search, tiny_overrides, tiny_space, write_space

METRIC = "crossval_rollout_mse"
PARAMS = {
    "training.learning_rate": {"loguniform": [1e-4, 1e-2]},
    "loss.tv_coeff": {"uniform": [0.0, 1.0]},
    "training.evolve_multiple_steps": {"randint": [2, 5]},
    "model.evolver.kind": {"choice": ["gru", "mlp"]},
}
LABELS = {  # the report's column labels (param path without its section)
    "training.learning_rate": "learning_rate",
    "loss.tv_coeff": "tv_coeff",
    "training.evolve_multiple_steps": "evolve_multiple_steps",
    "model.evolver.kind": "evolver.kind",
}


class Page(HTMLParser):
    """The parts of the page the tests look at: images, tables under their heading, warnings."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.tables: list[dict] = []  # heading, header, rows [(class, cells)]
        self.warnings: list[str] = []
        self.headings: list[tuple[str, str, str]] = []  # (tag, id, text)
        self.forbidden: list[str] = []  # script / link / external urls
        self._heading: str | None = None
        self._last_heading = ""
        self._cell: list[str] | None = None
        self._row: tuple[str, list[str]] | None = None
        self._warning: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//", "file:")):
                self.forbidden.append(f"{tag} {key}={a[key][:40]}")
        if tag in ("script", "link", "iframe", "object"):
            self.forbidden.append(tag)
        if tag == "img":
            self.imgs.append(a)
        elif tag in ("h2", "h3"):
            self._heading = ""
            self.headings.append((tag, a.get("id", ""), ""))
        elif tag == "table":
            self.tables.append({"heading": self._last_heading, "header": [], "rows": []})
        elif tag == "tr":
            self._row = (a.get("class", ""), [])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "div" and "warning" in a.get("class", ""):
            self._warning = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3") and self._heading is not None:
            t, i, _ = self.headings[-1]
            self.headings[-1] = (t, i, self._heading.strip())
            self._last_heading = self._heading.strip()
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row[1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if table["header"] or not self._row[1]:
                table["rows"].append(self._row)
            else:
                table["header"] = self._row[1]
            self._row = None
        elif tag == "div" and self._warning is not None:
            self.warnings.append("".join(self._warning))
            self._warning = None

    def handle_data(self, data: str) -> None:
        for buf in (self._heading, self._cell, self._warning):
            if isinstance(buf, list):
                buf.append(data)
        if self._heading is not None:
            self._heading += data

    def table(self, heading: str, nth: int = 0) -> dict:
        found = [t for t in self.tables if t["heading"].startswith(heading)]
        if len(found) <= nth:
            raise AssertionError(
                f"no table under {heading!r}: {[t['heading'] for t in self.tables]}"
            )
        return found[nth]


def _read(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def _run_report(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = report_main(argv)
    return rc, out.getvalue(), err.getvalue()


class _PageChecks:
    """Checks every page must pass (mixed into both test classes)."""

    pages: dict[str, Path]

    def test_every_image_is_a_decodable_png(self) -> None:
        for name, path in self.pages.items():
            page = _read(path)
            self.assertGreaterEqual(len(page.imgs), 3, name)
            for img in page.imgs:
                src = img["src"]
                self.assertTrue(src.startswith("data:image/png;base64,"), src[:40])
                try:
                    data = base64.b64decode(src.split(",", 1)[1], validate=True)
                except binascii.Error as exc:
                    self.fail(f"{name}: {img.get('alt')}: bad base64 ({exc})")
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
                with Image.open(io.BytesIO(data)) as im:
                    self.assertEqual(im.format, "PNG")
                    self.assertGreater(im.width * im.height, 10_000, img.get("alt"))

    def test_self_contained(self) -> None:
        for path in self.pages.values():
            self.assertEqual(_read(path).forbidden, [], path)


def _synthetic(exp: Path, n: int, *, pbt: bool, verified: bool, seed: int) -> pd.DataFrame:
    """A finished PBT-like search of `n` trials x 4 epochs whose objective is driven by the
    learning rate (distance of log10(lr) from -3); returns its trials table."""
    rng = np.random.default_rng(seed)
    exp.mkdir(parents=True)
    space = {
        "name": exp.name,
        "objective": {"metric": METRIC, "mode": "min"},
        "scheduler": {"type": "pbt", "perturbation_interval": 2} if pbt else {"type": "fifo"},
        "searcher": {"type": "random", "seed": 7},
        "space": PARAMS,
    }
    (exp / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    rows, trials = [], []
    for k in range(n):
        tid = f"{exp.name}_{k:05d}"
        p = {
            "training.learning_rate": float(10 ** rng.uniform(-4, -2)),
            "loss.tv_coeff": float(rng.uniform(0, 1)),
            "training.evolve_multiple_steps": int(rng.integers(2, 5)),
            "model.evolver.kind": ["gru", "mlp"][k % 2],
        }
        base = 0.3 + (np.log10(p["training.learning_rate"]) + 3) ** 2
        for epoch in range(1, 5):
            mse = base * (1 + 1 / epoch) + 0.01 * rng.normal()
            rows.append({"trial_id": tid, "epoch": epoch, METRIC: mse, "penalised": False, **p})
        curve = [r[METRIC] for r in rows[-4:]]
        trials.append(
            {
                "trial_id": tid,
                "status": "completed",
                "epochs": 4,
                f"final_{METRIC}": curve[-1],
                f"best_{METRIC}": min(curve),
                "best_epoch": int(np.argmin(curve)) + 1,
                **p,
            }
        )
    pd.DataFrame(rows).to_parquet(exp / "results.parquet")
    table = rank_trials(pd.DataFrame(trials), METRIC, "min")
    table.to_parquet(exp / "trials.parquet")
    if pbt:
        history = pd.DataFrame(
            {
                "step": [0, 1, 2],
                "target_trial": [3, 5, 1],
                "donor_trial": [0, 0, 2],
                "target_iteration": [2, 2, 4],
                "donor_iteration": [2, 2, 4],
                "training.learning_rate": [2e-3, 1e-3, 5e-4],
                "training.learning_rate_donor": [1e-3, 1e-3, 6e-4],
            }
        )
        history.to_parquet(exp / "pbt_history.parquet")
    if verified:
        top = table.head(3)
        seeds = [0, 1, 2]
        ver = [
            {
                "trial_id": "base",
                "role": "base",
                "search_rank": None,
                "n": 3,
                "seeds": seeds,
                "best_mean": 1.0,
                "best_sd": 0.05,
                "diff_mean": 0.0,
                "diff_lo": 0.0,
                "diff_hi": 0.0,
                "within_noise": False,
                "verified_rank": 4,
                "test_final_mean": 1.1,
                "test_final_sd": 0.06,
            }
        ]
        for i, (_, r) in enumerate(top.iterrows()):
            ver.append(
                {
                    "trial_id": r["trial_id"],
                    "role": "candidate",
                    "search_rank": int(r["rank"]),
                    "n": 3,
                    "seeds": seeds,
                    "best_mean": 0.5 + 0.01 * i,
                    "best_sd": 0.02,
                    "diff_mean": -0.5 + 0.01 * i,
                    "diff_lo": -0.55 + 0.01 * i,
                    "diff_hi": -0.45 + 0.01 * i,
                    "within_noise": i < 2,  # the winner and the runner-up are within noise
                    "verified_rank": i + 1,
                    "test_final_mean": 0.6,
                    "test_final_sd": 0.03,
                }
            )
        pd.DataFrame(ver).assign(metric=METRIC).to_parquet(exp / "verified.parquet")
    return table


class SyntheticReport(_PageChecks, unittest.TestCase):
    tmp: Path

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-html-"))
        cls.big = _synthetic(cls.tmp / "pbt_a", 12, pbt=True, verified=True, seed=0)
        cls.small = _synthetic(cls.tmp / "fifo_b", 3, pbt=False, verified=False, seed=1)
        cls.pages = {
            "pbt": write_report_html([cls.tmp / "pbt_a"], cls.tmp / "pbt.html"),
            "small": write_report_html([cls.tmp / "fifo_b"], cls.tmp / "small.html"),
        }
        rc, out, err = _run_report(
            [str(cls.tmp / "pbt_a"), str(cls.tmp / "fifo_b"), "--html", str(cls.tmp / "both.html")]
        )
        assert rc == 0, (out, err)
        cls.pages["both"] = cls.tmp / "both.html"

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_ranked_table_one_row_per_trial_with_verified_columns(self) -> None:
        table = _read(self.pages["pbt"]).table("Ranked trials")
        ids = [cells[1] for _, cells in table["rows"]]
        self.assertEqual(ids, list(self.big["trial_id"]))
        self.assertIn("verified best (mean ± sd)", table["header"])
        col = table["header"].index("vs base: diff [95% CI]")
        first = table["rows"][0][1]
        self.assertEqual(first[col], "-0.5 [-0.55, -0.45]")
        self.assertIn("(n=3)", first[col - 1])
        noise = [cells[1] for cls, cells in table["rows"] if cls == "noise"]
        self.assertEqual(noise, list(self.big["trial_id"].head(2)))
        ver = _read(self.pages["pbt"]).table("Verification")
        self.assertIn("base", [cells[0] for _, cells in ver["rows"]])

    def test_importances_list_every_parameter_and_find_the_driver(self) -> None:
        table = _read(self.pages["pbt"]).table("Hyperparameter importances")
        names = [cells[0] for _, cells in table["rows"]]
        self.assertEqual(sorted(names), sorted(LABELS.values()))
        self.assertEqual(names[0], "learning_rate")  # sorted by fANOVA; lr drives the objective
        scales = {cells[0]: cells[1] for _, cells in table["rows"]}
        self.assertEqual(scales["learning_rate"], "log")  # from the space file
        self.assertEqual(scales["evolver.kind"], "categorical")

    def test_few_trials_warning_only_when_few(self) -> None:
        self.assertFalse(any("Few trials" in w for w in _read(self.pages["pbt"]).warnings))
        warnings = _read(self.pages["small"]).warnings
        self.assertTrue(any("Few trials: only 3 trials" in w for w in warnings), warnings)

    def test_pbt_lineage(self) -> None:
        page = _read(self.pages["pbt"])
        self.assertIn("PBT lineage", [img.get("alt") for img in page.imgs])
        table = page.table("PBT lineage")
        self.assertEqual(len(table["rows"]), 3)
        self.assertNotIn("PBT lineage", [img.get("alt") for img in _read(self.pages["small"]).imgs])

    def test_two_experiments_side_by_side(self) -> None:
        page = _read(self.pages["both"])
        combined = page.table("All experiments, ranked together")
        self.assertEqual(len(combined["rows"]), 15)
        exp_col = combined["header"].index("experiment")
        self.assertEqual({c[exp_col] for _, c in combined["rows"]}, {"pbt_a", "fifo_b"})
        best = combined["header"].index(f"best_{METRIC}")
        values = [float(c[best]) for _, c in combined["rows"]]
        self.assertEqual(values, sorted(values))
        self.assertEqual({i for t, i, _ in page.headings if t == "h2" and i}, {"pbt_a", "fifo_b"})
        self.assertEqual(len(page.table("Ranked trials", 1)["rows"]), 3)

    def test_bad_input_one_line_exit_2_nothing_written(self) -> None:
        out = self.tmp / "bad.html"
        empty = self.tmp / "empty"
        empty.mkdir(exist_ok=True)
        broken = self.tmp / "broken"
        broken.mkdir(exist_ok=True)
        (broken / "results.parquet").write_text("not parquet")
        for d in (self.tmp / "missing", empty, broken):
            rc, _, err = _run_report([str(self.tmp / "pbt_a"), str(d), "--html", str(out)])
            self.assertEqual(rc, 2, err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertTrue(err.startswith(str(d)), err)
            self.assertFalse(out.exists())
        rc, _, err = _run_report([str(self.tmp / "pbt_a"), "--metric", "nope", "--html", str(out)])
        self.assertEqual(rc, 2)
        self.assertIn("nope", err)
        self.assertFalse(out.exists())

    def test_common_budget_ignores_a_crashed_trial(self) -> None:
        results = pd.DataFrame(
            {"trial_id": ["a"] * 4 + ["b"] * 2 + ["c"], "epoch": [1, 2, 3, 4, 1, 2, 1]}
        )
        self.assertEqual(common_budget(results, {"c": "stopped_early"}), 1)
        self.assertEqual(common_budget(results, {"c": "ERROR"}), 2)

    def test_constant_objective_gives_a_note_not_a_crash(self) -> None:
        results = pd.DataFrame(
            {
                "trial_id": list("abcd"),
                "epoch": [1] * 4,
                METRIC: [1.0] * 4,
                "training.learning_rate": [1e-3, 2e-3, 3e-3, 4e-3],
            }
        )
        imp = compute_importances(results, METRIC, "min", ["training.learning_rate"])
        self.assertEqual(imp.fanova, {})
        self.assertTrue(any("same objective" in n for n in imp.notes), imp.notes)
        results[METRIC] = [1.0, 2.0, 3.0, 4.0]
        imp = compute_importances(results, METRIC, "min", ["training.learning_rate"])
        self.assertAlmostEqual(imp.fanova["training.learning_rate"], 1.0)


class AshaSearchReport(_PageChecks, unittest.TestCase):
    """The report of a real (tiny) ASHA search, written by `report --html`."""

    tmp: Path

    @classmethod
    def setUpClass(cls) -> None:
        os.environ.update(QUIET)
        cls.tmp = Path(tempfile.mkdtemp(prefix="lt-html-asha-"))
        space = tiny_space(
            "asha_html",
            tiny_overrides(3),
            scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
            space={
                "training.learning_rate": {"loguniform": [3e-4, 3e-3]},
                "training.evolve_multiple_steps": {"randint": [2, 4]},
            },
            trials={"num_samples": 4, "max_concurrent": 2},
            resources={"cpu": 0.5},
        )
        path = write_space(cls.tmp, space)
        start_local_ray(num_cpus=2, include_dashboard=False)
        try:
            rc, out = run_search([str(path), "--storage", str(cls.tmp / "res"), "--name", "asha"])
        finally:
            ray.shutdown()
        assert rc == 0, out
        cls.exp = cls.tmp / "res" / "asha"
        cls.trials = pd.read_parquet(cls.exp / "trials.parquet")
        rc, out, err = _run_report([str(cls.exp), "--html", str(cls.tmp / "asha.html")])
        assert rc == 0, (out, err)
        cls.pages = {"asha": cls.tmp / "asha.html"}

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_ranked_table_one_row_per_trial(self) -> None:
        table = _read(self.pages["asha"]).table("Ranked trials")
        self.assertEqual(
            [cells[1] for _, cells in table["rows"]], list(self.trials["trial_id"].astype(str))
        )
        self.assertNotIn("verified best (mean ± sd)", table["header"])  # no verified.parquet

    def test_importances_at_the_common_budget_with_warning(self) -> None:
        page = _read(self.pages["asha"])
        table = page.table("Hyperparameter importances")
        self.assertEqual(
            sorted(cells[0] for _, cells in table["rows"]),
            ["evolve_multiple_steps", "learning_rate"],
        )
        self.assertTrue(any("Few trials" in w for w in page.warnings), page.warnings)
        text = self.pages["asha"].read_text()
        budget = int(self.trials.loc[self.trials["status"] != "ERROR", "epochs"].min())
        self.assertIn(f"up to epoch {budget} (the largest epoch every trial reached", text)

    def test_asha_rungs_name_the_stopped_trials(self) -> None:
        page = _read(self.pages["asha"])
        self.assertIn("ASHA rungs", [img.get("alt") for img in page.imgs])
        table = page.table("ASHA rungs")
        got = {tid: int(cells[0]) for _, cells in table["rows"] for tid in cells[2].split(", ")}
        stopped = self.trials[self.trials["status"] == "stopped_early"]
        self.assertEqual(got, dict(zip(stopped["trial_id"].astype(str), stopped["epochs"])))


if __name__ == "__main__":
    unittest.main()
