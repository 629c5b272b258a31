"""Can any node of this Ray hold one trial? Checked once, after connecting, before Tune starts.

Why: a trial is one actor, so its `resources.cpu` and `resources.gpu` must fit on a single node.
When none can hold it, Tune does not fail: it waits for ever, with a warning every minute
("ignore this message if the cluster is autoscaling"). On a Ray this command started itself
nothing will ever be added, so that is bad input (one line naming the key, exit status 2,
nothing written). On a cluster it joined, an autoscaler may still add a node, so it is a
warning that says what to look at.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from latent_tune.errors import UserInputError

__all__ = ["check_capacity", "node_capacities"]


def node_capacities(nodes: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every alive node, from `ray.nodes()`."""
    out = []
    for node in nodes:
        if node.get("Alive"):
            res = node.get("Resources") or {}
            out.append((float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))))
    return out


def _problem(
    caps: list[tuple[float, float]], cpu: float, gpu: float, where: str
) -> tuple[str, str] | None:
    """(key, problem) when no node holds cpu + gpu together; None when one does."""
    if any(c >= cpu and g >= gpu for c, g in caps):
        return None
    max_cpu = max((c for c, _ in caps), default=0.0)
    max_gpu = max((g for _, g in caps), default=0.0)
    if gpu > max_gpu:
        return "resources.gpu", f"{gpu:g} GPU per trial, but {where} has {max_gpu:g} GPUs"
    if cpu > max_cpu:
        return "resources.cpu", f"{cpu:g} CPUs per trial, but {where} has {max_cpu:g} CPUs"
    return "resources", f"no node has both {cpu:g} CPUs and {gpu:g} GPU for one trial"


def check_capacity(
    caps: list[tuple[float, float]],
    cpu: float,
    gpu: float,
    *,
    file: str | os.PathLike,
    fixed: bool,
) -> str | None:
    """Raise (a fixed Ray: this command's own) or return a warning line (a cluster) when no
    node can hold one trial; None when one can."""
    found = _problem(caps, cpu, gpu, "this machine" if fixed else "the largest node")
    if found is None:
        return None
    key, problem = found
    if fixed:
        no_gpu = key == "resources.gpu" and not any(g > 0 for _, g in caps)
        hint = (
            "set resources.gpu: 0 to train on CPU, or join a GPU cluster with --address"
            if no_gpu
            else f"lower {key}, or join a larger cluster with --address"
        )
        raise UserInputError(file, key, f"{problem}: {hint}")
    return (
        f"warning: {key}: {problem} yet; trials wait until the cluster's autoscaler adds such "
        "a node (`ray status` shows the pending demand)"
    )
