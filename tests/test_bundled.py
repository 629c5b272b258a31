"""Bundled configs are found by name from any working directory."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import unittest
from pathlib import Path

from latent_tune.bundled import bundled_dir, bundled_file
from latent_tune.train import main as train_main
from latent_tune.train import resolve_config_path


class BundledConfigs(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        old = Path.cwd()
        os.chdir(self.tmp)  # a working directory without trainables/
        self.addCleanup(os.chdir, old)

    def test_train_finds_a_bundled_name_elsewhere(self) -> None:
        expected = bundled_dir("trainables") / "eed_staggered_tiny.yaml"
        self.assertTrue(expected.is_file())
        self.assertEqual(resolve_config_path("eed_staggered_tiny"), expected)
        self.assertEqual(resolve_config_path("eed_staggered_tiny.yaml"), expected)
        # the command reads that file: a bad override is reported against it, nothing is written
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = train_main(["eed_staggered_tiny", "--set", "training.no_such_key=1"])
        self.assertEqual(rc, 2)
        self.assertNotIn("does not exist", err.getvalue())
        self.assertIn("no_such_key", err.getvalue())
        self.assertEqual(list(self.tmp.iterdir()), [])

    def test_paths_and_unknown_names_are_not_looked_up(self) -> None:
        self.assertIsNone(bundled_file("trainables", "sub/eed_staggered_tiny"))
        self.assertIsNone(bundled_file("trainables", "no_such_recipe"))
        self.assertEqual(resolve_config_path("no_such_recipe"), Path("no_such_recipe"))


if __name__ == "__main__":
    unittest.main()
