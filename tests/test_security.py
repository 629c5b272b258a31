"""Security defaults (issue 5, item 6): nothing a search starts or ships opens the cluster.

Why: anyone who reaches a Ray dashboard / Jobs API / GCS port can run code on the cluster
(ShadowRay, CVE-2023-48022). So a local search listens on loopback only (checked on the real
processes), no shipped file binds the dashboard to 0.0.0.0, the cluster files use token auth,
checkpoints and YAML are loaded safely, and a space's trainable name imports nothing but the
bundled trainables unless the user wrote an explicit `package.module:function`.
"""

from __future__ import annotations

import ast
import contextlib
import io
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
import unittest
from pathlib import Path
from unittest import mock

import ray
import yaml

from latent_tune.errors import UserInputError
from latent_tune.tune.plan import Plan
from latent_tune.tune.ray_session import LOOPBACK_SWITCH, QUIET_ENV, env, start_local_ray
from latent_tune.tune.resolve import resolve_trainable
from latent_tune.tune.run import print_where
from trainables import eed_staggered

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ("cluster.yaml", "clusters/onprem.yaml")
# a dashboard / Ray host flag or argument set to every interface
PUBLIC_BIND = re.compile(
    r"""(dashboard[-_]host|--host|node[-_]ip[-_]address|bind_all)\s*[=:]?\s*["']?(0\.0\.0\.0|::(?!1))"""
)


def _shipped_files() -> list[Path]:
    """Tracked files of the kinds the project ships (the tests themselves excluded)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    keep = (".yaml", ".yml", ".py", ".md", ".toml", ".sh", ".cfg")
    return [
        ROOT / f
        for f in out
        if not f.startswith("tests/") and (f.endswith(keep) or Path(f).name == "Makefile")
    ]


def _descendants(pid: int) -> set[int]:
    """pid and all its descendants, from /proc (psutil is not a dependency)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = {pid}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    return inodes


def _decode(hex_addr: str) -> str:
    """/proc/net/tcp{,6} local address (little-endian words) -> ip string."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def _listeners(pids: set[int]) -> list[tuple[str, int]]:
    """(ip, port) of every TCP socket in LISTEN state owned by one of pids."""
    inodes = _socket_inodes(pids)
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                    addr, port = f[1].split(":")
                    out.append((_decode(addr), int(port, 16)))
    return out


def _is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1, how gRPC binds it)."""
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def _python_without_switch(code: str) -> subprocess.CompletedProcess:
    """`python -c code` in the repo, its environment without the loopback switch."""
    env = {k: v for k, v in os.environ.items() if k != LOOPBACK_SWITCH}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class LocalRayLoopback(unittest.TestCase):
    """Start Ray exactly as a local search does; every listener of its processes is loopback."""

    def test_listeners_are_loopback(self) -> None:
        self.assertFalse(ray.is_initialized())
        env_vars = {**QUIET_ENV, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        with env(env_vars):
            ctx = start_local_ray()
        try:
            # start a worker too, so its listeners are counted
            self.assertEqual(ray.get(ray.remote(lambda: 1).remote(), timeout=120), 1)
            listeners = _listeners(_descendants(os.getpid()))
            url = getattr(ctx, "dashboard_url", None)
        finally:
            ray.shutdown()
        self.assertGreaterEqual(len(listeners), 3, listeners)  # GCS, raylet, object manager...
        public = [(ip, port) for ip, port in listeners if not _is_loopback(ip)]
        self.assertEqual(public, [], f"Ray listens beyond loopback: {public}")
        if url:
            self.assertTrue(url.startswith("127.0.0.1:"), url)

    def test_refuses_without_the_switch_at_import(self) -> None:
        """In a process whose `ray` was imported without the switch, no local start at all."""
        code = (
            "import sys; from latent_tune.tune.cli import start_local_ray\n"
            "try:\n    start_local_ray(num_cpus=1, include_dashboard=False)\n"
            "except Exception as e:\n    print(e); sys.exit(3)\n"
        )
        out = _python_without_switch(code)
        self.assertEqual(out.returncode, 3, out.stdout + out.stderr)
        self.assertIn(LOOPBACK_SWITCH, out.stdout)

    def test_a_program_that_starts_ray_itself_reexecutes_with_the_switch(self) -> None:
        """`ensure_loopback_switch` (the benchmarks call it): same program, switch on at import."""
        code = (
            "import os; from latent_tune.tune import cli\n"
            "print('start', os.getpid(), cli.LOOPBACK_AT_IMPORT, flush=True)\n"
            "cli.ensure_loopback_switch()\n"
            "switch = os.environ.get(cli.LOOPBACK_SWITCH)\n"
            "print('run', os.getpid(), cli.LOOPBACK_AT_IMPORT, switch)\n"
        )
        out = _python_without_switch(code)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.split()
        start, run = lines[:3], lines[-4:]
        self.assertEqual(start[0], "start")
        self.assertEqual(start[2], "False")
        # re-executed in place: the same PID, now with the switch read at import
        self.assertEqual(run, ["run", start[1], "True", "0"])


class DashboardToken(unittest.TestCase):
    """With token authentication the search says how to log in to the dashboard, never the
    token itself."""

    def _where(self, ctx: object) -> str:
        plan = Plan(None, "/s", "exp", "/s/exp", True)  # type: ignore[arg-type]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_where(plan, ctx)
        return out.getvalue()

    def test_hint_next_to_the_dashboard_url(self) -> None:
        ctx = types.SimpleNamespace(dashboard_url="127.0.0.1:8265")
        path = "/tmp/lt-home/.ray/auth_token"
        env_vars = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": path}
        with mock.patch.dict(os.environ, env_vars):
            os.environ.pop("RAY_AUTH_TOKEN", None)
            text = self._where(ctx)
        lines = text.splitlines()
        i = next(n for n, line in enumerate(lines) if line.startswith("dashboard:"))
        self.assertIn("ray get-auth-token", lines[i + 1])
        self.assertIn(path, lines[i + 1])
        with mock.patch.dict(os.environ, {"RAY_AUTH_MODE": "disabled"}):
            self.assertNotIn("get-auth-token", self._where(ctx))
        with mock.patch.dict(os.environ, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "s3cr3t"}):
            text = self._where(ctx)
        self.assertIn("RAY_AUTH_TOKEN", text)
        self.assertNotIn("s3cr3t", text)
        with mock.patch.dict(os.environ, {"RAY_AUTH_MODE": "token"}):
            self.assertNotIn("get-auth-token", self._where(types.SimpleNamespace()))

    def test_local_ray_uses_token_auth_and_the_command_prints_the_file(self) -> None:
        """Ray's own behaviour the hint relies on: a local start without RAY_AUTH_MODE turns
        token auth on (a token file in ~/.ray), and `ray get-auth-token` prints that token."""
        home = Path(tempfile.mkdtemp(prefix="lt-home-"))
        self.addCleanup(shutil.rmtree, home, ignore_errors=True)
        code = (
            "from latent_tune.tune.ray_session import dashboard_login_hint, start_local_ray\n"
            "import ray\n"
            "start_local_ray(num_cpus=1, include_dashboard=False)\n"
            "print('HINT', dashboard_login_hint())\n"
            "ray.shutdown()\n"
        )
        env_vars = {
            k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "HOME"
        }
        env_vars.update({**QUIET_ENV, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"})
        env_vars["PYTHONPATH"] = os.pathsep.join([str(ROOT), env_vars.get("PYTHONPATH", "")])
        run = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            cwd=ROOT,
            env=env_vars,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        token_file = home / ".ray" / "auth_token"
        self.assertTrue(token_file.is_file())
        token = token_file.read_text().strip()
        hint = next(x for x in run.stdout.splitlines() if x.startswith("HINT"))
        self.assertIn("ray get-auth-token", hint)
        self.assertIn(str(token_file), hint)
        self.assertNotIn(token, hint)
        ray_cli = Path(sys.executable).parent / "ray"
        got = subprocess.run(
            [str(ray_cli), "get-auth-token"],
            check=False,
            env=env_vars,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(got.returncode, 0, got.stderr)
        self.assertEqual(got.stdout.strip(), token)


class ShippedFiles(unittest.TestCase):
    """Static checks over what the project ships."""

    def test_no_public_dashboard(self) -> None:
        files = _shipped_files()
        self.assertTrue(any(f.name == "cluster.yaml" for f in files))
        bad = [
            f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
            for f in files
            if f.is_file()
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if PUBLIC_BIND.search(line)
        ]
        self.assertEqual(bad, [])

    def test_cluster_files_use_token_auth_and_loopback_dashboard(self) -> None:
        for name in CLUSTER_FILES:
            with self.subTest(name):
                cfg = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
                head = cfg["head_start_ray_commands"]
                starts = [c for c in head if "ray start" in c]
                self.assertTrue(starts)
                for cmd in starts:
                    self.assertIn("RAY_AUTH_MODE=token", cmd)
                    self.assertIn("--dashboard-host=127.0.0.1", cmd)
                workers = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
                self.assertTrue(workers)
                for cmd in workers:
                    self.assertIn("RAY_AUTH_MODE=token", cmd)
                self.assertTrue(any("auth_token" in k for k in cfg.get("file_mounts", {})))

    def test_safe_loading_only(self) -> None:
        """torch.load always with weights_only=True; YAML only through safe_load/safe_dump."""
        sources = [
            p for d in ("latent_tune", "trainables", "bench") for p in (ROOT / d).rglob("*.py")
        ]
        self.assertTrue(sources)
        problems = []
        for path in sources:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value
                name = owner.id if isinstance(owner, ast.Name) else None
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if name == "torch" and node.func.attr == "load":
                    kw = {k.arg: k.value for k in node.keywords}
                    flag = kw.get("weights_only")
                    if not (isinstance(flag, ast.Constant) and flag.value is True):
                        problems.append(f"{where}: torch.load without weights_only=True")
                if name == "yaml" and node.func.attr in (
                    "load",
                    "load_all",
                    "full_load",
                    "full_load_all",
                    "unsafe_load",
                    "unsafe_load_all",
                ):
                    problems.append(f"{where}: yaml.{node.func.attr} (use yaml.safe_load)")
                if name == "pickle" and node.func.attr in ("load", "loads"):
                    problems.append(f"{where}: pickle.{node.func.attr}")
        self.assertEqual(problems, [])


class TrainableNames(unittest.TestCase):
    """A bare name reaches only trainables/<name>.py; anything else needs `module:function`."""

    def test_bare_names_never_import_other_modules(self) -> None:
        for name in ("os", "subprocess", "this", "sys", "builtins"):
            with self.subTest(name):
                had = name in sys.modules
                out = io.StringIO()
                with contextlib.redirect_stdout(out), self.assertRaises(UserInputError) as cm:
                    resolve_trainable(name, file="space.yaml")
                self.assertEqual(cm.exception.key, "trainable")
                self.assertEqual(name in sys.modules, had, f"{name} was imported")
                self.assertEqual(out.getvalue(), "")

    def test_malformed_names_refused(self) -> None:
        for name in ("os.system", "../evil", "trainables.eed_staggered", "a:b:c", "x; rm -rf /"):
            with self.subTest(name), self.assertRaises(UserInputError) as cm:
                resolve_trainable(name, file="space.yaml")
            self.assertEqual(cm.exception.key, "trainable")

    def test_bundled_and_explicit_names(self) -> None:
        self.assertIs(resolve_trainable("eed_staggered"), eed_staggered.train)
        fn = resolve_trainable("tests.oom_trainable:train")
        self.assertEqual(fn.__module__, "tests.oom_trainable")


if __name__ == "__main__":
    unittest.main()
