"""Ray session set-up for a search: a local Ray on loopback only, or a bounded cluster join.

Why a module of its own: the loopback switch must be read when `ray` is imported, so every
program that starts a local Ray (the command, benchmarks, tests) goes through the same few
functions here, and the driver-kill watchdog starts with every local session.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from latent_tune.errors import UserInputError

__all__ = [
    "LOOPBACK_AT_IMPORT",
    "LOOPBACK_SWITCH",
    "QUIET_ENV",
    "connect",
    "dashboard_login_hint",
    "ensure_loopback_switch",
    "env",
    "needs_loopback_restart",
    "restart_with_loopback",
    "start_local_ray",
]

CONNECT_TIMEOUT_S = float(os.environ.get("LATENT_TUNE_CONNECT_TIMEOUT", "60"))
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a one-node Ray on 127.0.0.1 only
# Ray reads the switch once, when `ray` is imported (above): whether this process has it on
LOOPBACK_AT_IMPORT = os.environ.get(LOOPBACK_SWITCH) == "0"
_LOCAL_ENV = {LOOPBACK_SWITCH: "0"}  # the processes a local start launches read it themselves
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # we add CSV + JSON; no Tune TBX (own writers)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "1",
    # experiment-state snapshot period: after a SIGKILL of the driver, trials started in the
    # last few seconds are all that --resume cannot see (Tune's default is about 10 s or more)
    "TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "3"),
}


@contextlib.contextmanager
def env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a block and restore them (never leak the loopback switch
    into a later multi-node connection in the same process)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _has_dashboard() -> bool:
    if os.environ.get("LATENT_TUNE_DASHBOARD", "1") == "0":
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("aiohttp", "aiohttp_cors"))


def _check_reachable(address: str) -> None:
    """Fail fast on HOST:PORT nobody listens on (ray.init would hang for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError("--address", None, f"expected auto or HOST:PORT, got '{address}'")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise UserInputError(
            "--address", None, f"no Ray cluster reachable at {address}: {exc.strerror or exc}"
        ) from None


def _init_with_timeout(**kwargs: Any) -> Any:
    """ray.init in a thread, bounded by CONNECT_TIMEOUT_S."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["ctx"] = ray.init(**kwargs)
        except Exception as exc:  # reported below as one line
            box["err"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(CONNECT_TIMEOUT_S)
    if th.is_alive():
        raise UserInputError(
            "--address",
            None,
            f"Ray at {kwargs.get('address')} did not answer within {CONNECT_TIMEOUT_S:.0f} s",
        )
    if "err" in box:
        msg = " ".join(str(box["err"]).split())[:300]
        raise UserInputError(
            "--address", None, f"cannot join Ray at {kwargs.get('address')}: {msg}"
        )
    return box["ctx"]


def start_local_ray(runtime_env: dict[str, Any] | None = None, **init_kwargs: Any) -> Any:
    """Start the one-node Ray of a local search: every listener (GCS, raylet, object manager,
    dashboard) on loopback only. One function so the security test starts Ray exactly so.

    Ray decides its node address from `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read into the
    driver when `ray` is imported; set later, only the started processes see it and the driver
    still binds all interfaces. So this process must have had it from the start: the command
    re-executes itself with it (see `latent_tune.tune.cli.main`), an embedding program or test
    sets it first.
    """
    if not LOOPBACK_AT_IMPORT:
        raise UserInputError(
            LOOPBACK_SWITCH,
            None,
            "a local Ray started in this process would listen on every interface: set "
            f"{LOOPBACK_SWITCH}=0 before importing ray, or join a cluster with --address",
        )
    kwargs: dict[str, Any] = {
        "include_dashboard": _has_dashboard(),
        "log_to_driver": False,
        "logging_level": logging.WARNING,
        "runtime_env": runtime_env,
        **init_kwargs,  # tests: num_cpus, include_dashboard=False
    }
    with env(_LOCAL_ENV):
        try:
            ctx = ray.init(address="local", dashboard_host="127.0.0.1", **kwargs)
        except Exception as exc:  # Ray raises bare Exceptions (e.g. its 30 s start-up timeout)
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise UserInputError(
                None,
                "ray",
                f"the local Ray did not start ({first.strip()[:200]}); on an overloaded machine "
                "its processes may miss Ray's start-up timeout: try again, or start Ray "
                "yourself (ray start --head) and pass --address",
            ) from None
    _start_watchdog(ctx.address_info["session_dir"])
    return ctx


def needs_loopback_restart(address: str | None, dry_run: bool) -> bool:
    """This command will start a local Ray, but its `ray` was imported without the switch."""
    local = (address or os.environ.get("RAY_ADDRESS") or "local") == "local"
    return local and not dry_run and not LOOPBACK_AT_IMPORT and not ray.is_initialized()


def ensure_loopback_switch() -> None:
    """For a program that starts a local Ray itself (benchmarks): when its `ray` was imported
    without the loopback switch, re-execute it with the switch (same PID, about 2 s)."""
    if not LOOPBACK_AT_IMPORT and not ray.is_initialized():
        restart_with_loopback()


def restart_with_loopback() -> None:
    """Replace this process by the same command with the switch set (same PID, ~2 s)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), {**os.environ, **_LOCAL_ENV})


def _start_watchdog(session_dir: str) -> None:
    """A small process that stops this session's Ray processes if the driver is killed."""
    subprocess.Popen(
        [sys.executable, "-m", "latent_tune.tune.watchdog", str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives a SIGKILL of the driver's process group
    )


def connect(address: str | None, storage_given: bool) -> tuple[Any, bool]:
    """Start a local Ray (loopback) or join a cluster. Returns (context, started_locally)."""
    if ray.is_initialized():  # an embedding program (or a test) already connected: use it
        return ray.get_runtime_context(), False
    address = address or os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(_pythonpath())}}
    if address in (None, "local"):
        return start_local_ray(runtime_env), True
    if address != "auto":
        _check_reachable(address)
    ctx = _init_with_timeout(
        address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env
    )
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not storage_given:
        ray.shutdown()
        raise UserInputError(
            "--storage",
            None,
            f"the cluster has {len(alive)} nodes: give shared storage "
            "(a path every node mounts, or s3:// / gs://) with --storage or `storage:`",
        )
    return ctx, False


def dashboard_login_hint() -> str | None:
    """How to get past the dashboard's "Authentication Token Required" dialog, or None when
    this session has no token authentication. Never the token itself (the output is logged).

    Ray 2.60 turns token authentication on for a new local Ray unless RAY_AUTH_MODE says
    otherwise, and records the mode in this process's RAY_AUTH_MODE; the token comes from
    RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (created by
    ray.init when missing).
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "from $RAY_AUTH_TOKEN"
    else:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        source = f"token file {path}"
    return f"`ray get-auth-token` prints the dashboard's login token ({source})"


def _pythonpath() -> list[str]:
    """Workers must import `trainables` and `latent_tune` the way the driver does."""
    here = [str(Path.cwd())]
    for pkg in ("latent_tune", "trainables"):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            here.append(str(Path(next(iter(spec.submodule_search_locations))).parent))
    old = os.environ.get("PYTHONPATH", "")
    return list(dict.fromkeys([*here, *[p for p in old.split(os.pathsep) if p]]))
