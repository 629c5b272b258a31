"""The family comparison's cells resolve to what their names promise.

A cell is a search with tu fixed followed by `--verify 1`, whose reference is the base recipe:
so the base config must run at the cell's tu as well as every sampled trial (a tu 10 cell once
verified its winner against a tu 20 base and crowned the base), and staggered EED must use the
causal start frame that LFADS is held to.
"""

from __future__ import annotations

import json
import tempfile
import unittest
from pathlib import Path

from latent_tune.errors import UserInputError
from latent_tune.tune.resolve import resolve
from latent_tune.tune.space import find_space_file, load_space
from tests.test_bench_smoke import load_bench

ROOT = Path(__file__).resolve().parents[1]


class TestCells(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.bench = load_bench("compare_families")

    def resolved(self, name: str):
        cmd = self.bench.search_command(name, Path("/nonexistent"), None)
        sets = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
        space_file = find_space_file(cmd[cmd.index("-m") + 2], ROOT / "search_spaces")
        return resolve(load_space(space_file, sets), space_file)

    def test_base_and_trials_run_at_the_cells_tu(self) -> None:
        for name, cell in self.bench.CELLS.items():
            with self.subTest(cell=name):
                res = self.resolved(name)
                self.assertEqual(res.base_config.training.time_units, cell.tu)
                self.assertEqual(res.base_config.recipe, cell.recipe)
                tuned = res.space.space.get("training.time_units")
                if tuned is not None:
                    self.assertEqual(tuned.choice, [cell.tu])

    def test_staggered_eed_uses_the_causal_start_frame_without_weight_averaging(self) -> None:
        for name, cell in self.bench.CELLS.items():
            if cell.recipe != "staggered":
                continue
            with self.subTest(cell=name):
                cfg = self.resolved(name).base_config
                self.assertEqual(cfg.acquisition.interpolation, "hold")
                self.assertEqual(cfg.training.ema_decay, 0.0)
                self.assertEqual(cfg.training.lr_schedule.type, "constant")


class TestPreviousCells(unittest.TestCase):
    """`table --previous`: cells measured elsewhere join the table unless re-run here."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.bench = load_bench("compare_families")

    def test_cells_not_in_storage_are_carried_over_and_marked(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "families.json"
            rows = [{"cell": "eed_tu20", "best_mean": 0.06}, {"cell": "lfads_tu20"}]
            path.write_text(json.dumps({"cells": rows}), encoding="utf-8")
            carried = self.bench.previous_cells(path, present={"lfads_tu20"})
            self.assertEqual([r["cell"] for r in carried], ["eed_tu20"])
            self.assertEqual(carried[0]["best_mean"], 0.06)
            self.assertEqual(carried[0]["carried_from"], str(path))
            self.assertEqual(self.bench.previous_cells(None, present=set()), [])

    def test_a_file_that_is_no_table_is_one_line(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for text in ("not json", json.dumps({"cells": [{"cell": "eed_tu99"}]})):
                path = Path(tmp) / "bad.json"
                path.write_text(text, encoding="utf-8")
                with self.subTest(text=text), self.assertRaises(UserInputError) as err:
                    self.bench.previous_cells(path, present=set())
                self.assertTrue(str(err.exception).startswith(f"{path}: cells: "))


if __name__ == "__main__":
    unittest.main()
