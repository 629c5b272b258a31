"""Stop a local search's Ray processes when its driver dies without shutting Ray down.

Why: after a SIGKILL of the `search` process, Ray 2.60 leaves its DashboardAgent and
RuntimeEnvAgent running (docs/tuning_notes.md, section 10). `start_local_ray` starts this
watchdog beside the driver;
while the driver lives it records the processes of the driver's own Ray session (children of the
driver whose command line names the session dir, and all their descendants, with their start
times); when the driver is gone it stops exactly those that are still alive. It never touches a
process it did not see descend from this session, and a recycled PID is recognised by its start
time.

    python -m latent_tune.tune.watchdog DRIVER_PID SESSION_DIR
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 3.0  # let Ray's own processes notice the dead driver first


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="ignore")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def session_processes(driver_pid: int, session_dir: str) -> dict[int, int]:
    """pid -> start time of the session's processes: roots naming the session dir, descendants."""
    parents: dict[int, tuple[int, int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is not None:
            parents[pid] = st
    found = {
        pid: st[1]
        for pid, st in parents.items()
        if st[0] == driver_pid and session_dir in _cmdline(pid)
    }
    grew = True
    while grew:
        grew = False
        for pid, (ppid, start) in parents.items():
            if ppid in found and pid not in found:
                found[pid] = start
                grew = True
    return found


def stop(processes: dict[int, int], sig: int) -> list[int]:
    """Signal the recorded processes that are still the same process; return those signalled."""
    hit = []
    for pid, start in processes.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                hit.append(pid)
    return hit


def watch(driver_pid: int, session_dir: str) -> None:
    """Record the session while the driver lives; clean up what outlives it."""
    seen: dict[int, int] = {}
    driver = _stat(driver_pid)
    while driver is not None and (_stat(driver_pid) or (0, -1))[1] == driver[1]:
        seen.update(session_processes(driver_pid, session_dir))
        seen.pop(os.getpid(), None)  # this watchdog names the session dir too
        time.sleep(POLL_S)
    time.sleep(GRACE_S)
    if stop(seen, signal.SIGTERM):
        time.sleep(GRACE_S)
        stop(seen, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print("usage: python -m latent_tune.tune.watchdog DRIVER_PID SESSION_DIR", file=sys.stderr)
        return 2
    watch(int(args[0]), args[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
