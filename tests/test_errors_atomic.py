"""UserInputError / run_cli (one-line errors, exit codes) and atomic files and directories."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import stat
import tempfile
import unittest
from pathlib import Path

from latent_tune.atomic import atomic_dir, atomic_file, atomic_write_bytes, atomic_write_text
from latent_tune.data.cli import main as data_main
from latent_tune.errors import UserInputError, run_cli
from latent_tune.report import main as report_main
from latent_tune.search import main as search_main
from latent_tune.train import main as train_main


class UserInputErrorTest(unittest.TestCase):
    def test_message_names_file_key_problem(self) -> None:
        e = UserInputError(Path("/a/b.yaml"), "loss.tv_coeff", "must be >= 0")
        self.assertEqual(str(e), "/a/b.yaml: loss.tv_coeff: must be >= 0")
        self.assertEqual(
            (e.file, e.key, e.problem), (Path("/a/b.yaml"), "loss.tv_coeff", "must be >= 0")
        )

    def test_none_file_and_key_print_dash(self) -> None:
        self.assertEqual(str(UserInputError(None, None, "bad")), "-: -: bad")
        self.assertEqual(str(UserInputError("f", None, "bad")), "f: -: bad")

    def test_multiline_problem_becomes_one_line(self) -> None:
        self.assertEqual(str(UserInputError("f", "k", "a\n  b\tc")), "f: k: a b c")

    def test_pickles(self) -> None:
        e = pickle.loads(pickle.dumps(UserInputError("f", "k", "p")))
        self.assertIsInstance(e, UserInputError)
        self.assertEqual(str(e), "f: k: p")


class RunCliTest(unittest.TestCase):
    def run_body(self, body) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = run_cli(body)
        return rc, err.getvalue()

    def test_returns_body_status(self) -> None:
        self.assertEqual(self.run_body(lambda: 0), (0, ""))
        self.assertEqual(self.run_body(lambda: 3)[0], 3)

    def test_user_input_error_is_one_line_status_2(self) -> None:
        def body() -> int:
            raise UserInputError("x.yaml", "a.b", "unknown key")

        rc, err = self.run_body(body)
        self.assertEqual(rc, 2)
        self.assertEqual(err, "x.yaml: a.b: unknown key\n")

    def test_keyboard_interrupt_is_130(self) -> None:
        def body() -> int:
            raise KeyboardInterrupt

        self.assertEqual(self.run_body(body)[0], 130)

    def test_other_errors_propagate(self) -> None:
        def body() -> int:
            raise RuntimeError("bug")

        with self.assertRaises(RuntimeError):
            run_cli(body)


class CommandArguments(unittest.TestCase):
    """Every command, called in-process: a bad flag is one stderr line and status 2 (no
    SystemExit), --help prints the usage and returns 0."""

    COMMANDS = {
        "search": (search_main, ["space.yaml"]),
        "report": (report_main, ["exp_dir"]),
        "train": (train_main, ["config.yaml"]),
        "data": (data_main, ["info", "some_dir"]),
    }

    def call(self, main, argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
        return rc, out.getvalue(), err.getvalue()

    def test_bad_flag_is_one_line_status_2(self) -> None:
        for name, (main, args) in self.COMMANDS.items():
            with self.subTest(name):
                rc, out, err = self.call(main, [*args, "--no-such-flag"])
                self.assertEqual(rc, 2)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn("--no-such-flag", err)
                self.assertTrue(err.startswith("-: "), err)
                self.assertEqual(out, "")

    def test_missing_argument_is_one_line_status_2(self) -> None:
        for name, (main, _) in self.COMMANDS.items():
            with self.subTest(name):
                rc, _, err = self.call(main, [])
                self.assertEqual(rc, 2)
                self.assertEqual(err.count("\n"), 1, err)
                self.assertIn("required", err)

    def test_help_prints_and_returns_0(self) -> None:
        for name, (main, _) in self.COMMANDS.items():
            with self.subTest(name):
                rc, out, err = self.call(main, ["--help"])
                self.assertEqual(rc, 0)
                self.assertIn("usage:", out)
                self.assertEqual(err, "")


class AtomicTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.tmp.iterdir())

    def test_atomic_dir_creates_and_hides_work_in_progress(self) -> None:
        final = self.tmp / "out"
        with atomic_dir(final) as work:
            self.assertNotEqual(work, final)
            self.assertEqual(work.parent, self.tmp)
            (work / "a.txt").write_text("hello")
            self.assertFalse(final.exists())
        self.assertEqual((final / "a.txt").read_text(), "hello")
        self.assertEqual(self.entries(), ["out"])

    def test_atomic_dir_replaces_existing(self) -> None:
        final = self.tmp / "out"
        final.mkdir()
        (final / "old.txt").write_text("old")
        with atomic_dir(final) as work:
            (work / "new.txt").write_text("new")
            self.assertTrue((final / "old.txt").exists())  # untouched until success
        self.assertEqual(sorted(p.name for p in final.iterdir()), ["new.txt"])
        self.assertEqual(self.entries(), ["out"])

    def test_atomic_dir_error_leaves_nothing_and_keeps_old(self) -> None:
        final = self.tmp / "out"
        with self.assertRaises(ValueError), atomic_dir(final) as work:
            (work / "a.txt").write_text("x")
            raise ValueError("boom")
        self.assertEqual(self.entries(), [])
        final.mkdir()
        (final / "old.txt").write_text("old")
        with self.assertRaises(KeyboardInterrupt), atomic_dir(final):
            raise KeyboardInterrupt
        self.assertEqual(self.entries(), ["out"])
        self.assertEqual((final / "old.txt").read_text(), "old")

    def test_permissions_follow_umask_not_private(self) -> None:
        umask = os.umask(0o022)
        os.umask(umask)
        with atomic_dir(self.tmp / "out"):
            pass
        atomic_write_text(self.tmp / "f.txt", "x")
        self.assertEqual(stat.S_IMODE((self.tmp / "out").stat().st_mode), 0o777 & ~umask)
        self.assertEqual(stat.S_IMODE((self.tmp / "f.txt").stat().st_mode), 0o666 & ~umask)

    def test_atomic_file(self) -> None:
        final = self.tmp / "f.txt"
        final.write_text("old")
        with atomic_file(final) as work:
            work.write_text("new")
            self.assertEqual(final.read_text(), "old")
        self.assertEqual(final.read_text(), "new")
        with self.assertRaises(ValueError), atomic_file(final) as work:
            work.write_text("half")
            raise ValueError
        self.assertEqual(final.read_text(), "new")
        self.assertEqual(self.entries(), ["f.txt"])

    def test_atomic_write_text_and_bytes(self) -> None:
        atomic_write_text(self.tmp / "sub" / "t.txt", "héllo\n")
        self.assertEqual((self.tmp / "sub" / "t.txt").read_text(encoding="utf-8"), "héllo\n")
        atomic_write_bytes(self.tmp / "b.bin", b"\x00\x01")
        self.assertEqual((self.tmp / "b.bin").read_bytes(), b"\x00\x01")
        self.assertEqual(self.entries(), ["b.bin", "sub"])


if __name__ == "__main__":
    unittest.main()
