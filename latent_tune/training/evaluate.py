"""Open-loop rollout evaluation, its metrics, the cross-val objective (docs/method.md, section 8).

Why this shape: at lab scale a (starts x 2000 steps x N) error array is 1-4 GB, which the lab
copied to the host every epoch. Here the rollout runs batched over starts in blocks of steps
and every block is reduced on the device at once to neuron-mean curves (starts x steps) plus
running per-neuron moments; only those small results ever leave the device.

Index convention (docs/method.md, section 8.2; training's decode-before-evolve): z_0 =
Enc(X~[start]); z_{k+1} = z_k + f([z_k, u_{start+k}]); curve index k is the prediction Dec(z_{k+1})
for time start + k + 1. All baselines use the same index -> time map, so a curve's training
points sit at indices m*tu - 1 for every curve alike.

Fast path (``fast=True``, for CUDA): every step's decode is needed for the 2000-step curve, so
nothing is skipped; instead blocks are 4x larger (fewer, larger decode launches and
reductions) and the evolver step is torch.compile'd (a fused kernel chain instead of a chain
of small launches). On CPU it is the plain computation (same blocks, eager step): there
compile time would dominate and larger blocks measured slower (bench/bench_masked_decode.py).
``bf16=True`` runs the model calls under bf16 autocast (training/precision.py; the latent
state, errors and curves stay float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from latent_tune.training.precision import bf16_autocast

__all__ = [
    "BASELINES",
    "BASELINE_METRICS",
    "STABILITY_PREFIX",
    "DatasetEval",
    "crossval_intervening_mse",
    "crossval_objective",
    "evaluate_dataset",
    "stability_metrics",
]

STABILITY_PREFIX = "rollout_latent_2000step_"
SHORT_STEPS = 250
# Baseline curves computed per (start, step) after the model's (index 0), with their metric names.
BASELINES = ("constant", "constant_interp", "linear", "staggered")
BASELINE_METRICS = {
    "constant": "constant_mse_overall",  # x(start) held
    "constant_interp": "constant_interp_mse_overall",  # X~(start) held
    "linear": "linear_interp_mse_overall",  # line between fully observed tu-spaced anchors
    "staggered": "staggered_interp_mse_overall",  # X~ vs X (the observer's own error)
}
_BLOCK_ELEMENTS = 1 << 24  # ~16M floats per (steps x starts x N) block temporary
_FAST_BLOCK_FACTOR = 4  # the fast path's blocks are this many times larger
_COMPILED: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {}


def _evolve_step(evolver: nn.Module, z: Tensor, u: Tensor) -> Tensor:
    """z + f([z, u]), the same arithmetic as ``EEDModel.step``: the unit the fast path compiles."""
    return z + evolver(torch.cat((z, u), dim=-1))


def _step_fn(fast: bool, device: torch.device) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The evolver step to use: compiled once per process on CUDA with ``fast``, else eager."""
    if not (fast and device.type == "cuda"):
        return _evolve_step
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(_evolve_step, dynamic=False)
    return _COMPILED["step"]


def _latent_rollout(
    step: Callable[[nn.Module, Tensor, Tensor], Tensor], evolver: nn.Module, z: Tensor, u: Tensor
) -> Tensor:
    """z_1 .. z_K (K, B, L) like ``EEDModel.rollout``, with a chosen step function."""
    zs = []
    for k in range(u.shape[0]):
        z = step(evolver, z, u[k])
        zs.append(z)
    return torch.stack(zs)


@dataclass
class DatasetEval:
    """Everything one dataset's evaluation produced: scalar metrics plus small host curves.

    ``metrics`` holds plain floats (names of docs/method.md, section 8.3). Curves are CPU float32:
    ``curves`` (n_starts, steps) neuron-mean MSE per start and step, ``constant_curve`` (steps,)
    the constant baseline averaged over starts, ``short`` name -> (min(250, steps),) curves
    averaged over starts for "model" and each of ``BASELINES``. ``scatter`` / ``traces`` are
    filled only with ``need_figures``: ``scatter[best|worst] = {"var_truth", "var_error"}``
    (N,) and ``traces[best|worst] = {"truth", "prediction"}`` (steps, n_trace).
    """

    metrics: dict[str, float]
    finite: bool
    rollout_steps: int
    tu: int
    horizon: int
    starts: Tensor
    curves: Tensor
    constant_curve: Tensor
    short: dict[str, Tensor]
    best_start: int
    worst_start: int
    scatter: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    traces: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    trace_neurons: Tensor | None = None


def stability_metrics(
    m: Tensor,
    tu: int,
    horizon: int,
    threshold: float,
    *,
    prefix: str = STABILITY_PREFIX,
) -> dict[str, float]:
    """Stability metrics (docs/method.md, section 8.3) from the worst-start curve m (steps,).

    first_divergence_step = first k with m(k) > threshold (NaN/inf count as diverged), else the
    curve length; the windows use the pre-divergence prefix m[:first] (m[:1] when it diverges at
    0): loss points are indices m*tu - 1 < H, intervening indices are the other ones < H (tu > 1
    only), beyond_training is [H, prefix). mse_final is the last step of the full curve. An empty
    window gives NaN.
    """
    m = m.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    steps = m.numel()
    if steps == 0:
        raise ValueError("empty MSE curve")
    tu, horizon = int(tu), int(horizon)
    bad = torch.nonzero(~(m <= threshold))
    first = int(bad[0]) if bad.numel() else steps
    prefix_len = max(first, 1)
    pre = m[:prefix_len]
    k = torch.arange(prefix_len)
    in_fit = k < horizon
    at_loss = in_fit & ((k + 1) % tu == 0)
    between = in_fit & ~at_loss

    def mean(sel: Tensor) -> float:
        return float(pre[sel].mean()) if bool(sel.any()) else math.nan

    return {
        f"{prefix}first_divergence_step": float(first),
        f"{prefix}mse_at_loss_points": mean(at_loss),
        f"{prefix}mse_intervening": mean(between) if tu > 1 else math.nan,
        f"{prefix}mse_beyond_training": mean(~in_fit),
        f"{prefix}mse_max": float(pre.max()),
        f"{prefix}mse_final": float(m[-1]),
    }


class _Moments:
    """Running per-(start, neuron) mean and sum of squared deviations (Chan's merge of blocks).

    Why not E[x^2] - E[x]^2: activity has a mean well away from zero, which would cancel
    catastrophically in float32 over 2000 steps.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, block: Tensor) -> None:
        """block: (steps, n_starts, N)."""
        nb = block.shape[0]
        bmean = block.mean(0)
        bm2 = (block - bmean).square().sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = nb, bmean, bm2
            return
        total = self.count + nb
        delta = bmean - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + bm2 + delta.square() * (self.count * nb / total)
        self.count = total

    def variance(self) -> Tensor:
        assert self.m2 is not None
        return self.m2 / max(self.count, 1)


def _neuron_mse(a: Tensor, b: Tensor) -> Tensor:
    """(steps, n, N) pair -> (n, steps) neuron-mean squared error."""
    return (a - b).square().mean(-1).transpose(0, 1)


@torch.no_grad()
def evaluate_dataset(
    model: nn.Module,
    x: Tensor,
    x_interp: Tensor,
    stim: Tensor,
    starts: Tensor,
    *,
    tu: int,
    horizon: int,
    rollout_steps: int,
    threshold: float,
    need_figures: bool,
    trace_neurons: Tensor | None = None,
    block_steps: int | None = None,
    short_steps: int = SHORT_STEPS,
    fast: bool = False,
    bf16: bool = False,
    z0: Tensor | None = None,
) -> DatasetEval:
    """Roll the model out open-loop from every start at once and reduce on the device.

    x (T, N) is the full ground truth, x_interp (T, N) its staggered interpolation (the model's
    start frames), stim (T, S) the raw stimulus; best on the model's device (moved per block
    otherwise). starts (n,) need start + rollout_steps <= T - 1. ``tu`` is the observation
    period (1 for all_time_points). A NaN/inf or exploding rollout never raises: it makes
    ``finite`` False and the metrics NaN/inf, which ``crossval_objective`` penalises.
    ``trace_neurons`` (e.g. one per cell type) selects the neurons whose rollout traces are kept
    for the figures; ``block_steps`` only trades memory for speed. ``fast`` and ``bf16``: see
    the module docstring (``fast`` gives the plain result up to float rounding). ``z0`` (n, L)
    is the rollout's initial state per start when the recipe makes its own (it must read only
    rows up to each start); by default the model encodes the interpolated start frame.
    Any model with ``encode_stimulus``, ``rollout`` and ``decode`` (EED's interface) works.
    """
    ref = next(iter(model.parameters()))
    device = ref.device
    dtype = torch.promote_types(ref.dtype, torch.float32)  # curves at least in float32
    n_rows, n_neurons = x.shape
    steps, tu, horizon = int(rollout_steps), int(tu), int(horizon)
    starts_cpu = starts.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    n = starts_cpu.numel()
    if n == 0 or steps < 1:
        raise ValueError("need at least one start and one rollout step")
    if int(starts_cpu.min()) < 0 or int(starts_cpu.max()) + steps > n_rows - 1:
        raise ValueError(f"starts must lie in [0, {n_rows - steps - 1}] for {steps} steps")
    budget = _BLOCK_ELEMENTS * (_FAST_BLOCK_FACTOR if fast and device.type == "cuda" else 1)
    bl = block_steps or max(1, budget // max(n * n_neurons, 1))
    bl = max(1, min(int(bl), steps))
    st = starts_cpu.to(x.device)

    def rows_to_dev(a: Tensor, rows: Tensor) -> Tensor:
        return a[rows].to(device=device, dtype=ref.dtype, non_blocking=True)

    was_training = model.training
    model.eval()
    try:
        x_start = rows_to_dev(x, st).to(dtype)  # (n, N)
        xi_start = rows_to_dev(x_interp, st)
        fast = fast and hasattr(model, "evolver")  # the compiled step is EED's residual step
        step = _step_fn(fast, device)
        if z0 is None:
            with bf16_autocast(bf16, device):
                z = model.encode(xi_start).to(ref.dtype)  # the latent state stays full precision
        else:
            z = z0.to(device=device, dtype=ref.dtype)
        xi_start = xi_start.to(dtype)
        curves = torch.full((1 + len(BASELINES), n, steps), math.nan, device=device, dtype=dtype)
        truth_mom = _Moments() if need_figures else None
        err_mom = _Moments() if need_figures else None
        tr_idx = None
        tr_pred = None
        if need_figures and trace_neurons is not None:
            tr_idx = trace_neurons.detach().to(device=device, dtype=torch.int64).reshape(-1)
            tr_pred = torch.full((steps, n, tr_idx.numel()), math.nan, device=device, dtype=dtype)
        alive = True
        for b0 in range(0, steps, bl):
            b1 = min(b0 + bl, steps)
            k = torch.arange(b0, b1, device=x.device)
            rows = st.unsqueeze(0) + k.unsqueeze(1)  # (bl, n): stimulus times start + k
            truth = rows_to_dev(x, rows + 1).to(dtype)  # (bl, n, N): times start + k + 1
            if alive:
                with bf16_autocast(bf16, device):
                    u = model.encode_stimulus(rows_to_dev(stim, rows))
                    zs = _latent_rollout(step, model.evolver, z, u) if fast else model.rollout(z, u)
                    z = zs[-1]
                    pred = model.decode(zs).to(dtype)
                err = pred - truth
                curves[0, :, b0:b1] = err.square().mean(-1).transpose(0, 1)
                if err_mom is not None:
                    err_mom.update(err)
                if tr_pred is not None and tr_idx is not None:
                    tr_pred[b0:b1] = pred.index_select(-1, tr_idx)
                del pred, err, zs, u
                # One sync per block: once every start's state is NaN/inf, skip the model.
                alive = bool(torch.isfinite(z).all(dim=-1).any())
            if truth_mom is not None:
                truth_mom.update(truth)
            curves[1, :, b0:b1] = _neuron_mse(x_start, truth)
            curves[2, :, b0:b1] = _neuron_mse(xi_start, truth)
            if tu > 1:
                # Anchors start + j*tu fully observed; index k is time start + k + 1.
                s = k + 1
                j = torch.div(s, tu, rounding_mode="floor")
                w = (torch.remainder(s, tu).to(dtype) / tu).to(device)
                lo_rows = st.unsqueeze(0) + (j * tu).unsqueeze(1)
                hi_rows = (lo_rows + tu).clamp_max(n_rows - 1)
                lo, hi = rows_to_dev(x, lo_rows).to(dtype), rows_to_dev(x, hi_rows).to(dtype)
                lin = torch.lerp(lo, hi, w[:, None, None])
                curves[3, :, b0:b1] = _neuron_mse(lin, truth)
                del lin, lo, hi
            else:
                curves[3, :, b0:b1] = 0.0
            curves[4, :, b0:b1] = _neuron_mse(rows_to_dev(x_interp, rows + 1).to(dtype), truth)
            del truth

        model_curve = curves[0]
        worst_curve = model_curve.max(0).values  # NaN propagates: counts as diverged
        per_start = torch.nan_to_num(model_curve.mean(1), nan=math.inf)
        short = min(int(short_steps), steps)
        fit, beyond = model_curve[:, :horizon], model_curve[:, horizon:]
        nan = torch.tensor(math.nan, device=device, dtype=dtype)
        scalars = torch.stack(
            [
                model_curve.mean(),
                fit.mean() if fit.numel() else nan,
                beyond.mean() if beyond.numel() else nan,
                *(curves[1 + i].mean() for i in range(len(BASELINES))),
                torch.isfinite(model_curve).all().to(dtype),
                torch.argmin(per_start).to(dtype),
                torch.argmax(per_start).to(dtype),
            ]
        ).cpu()
        # Host copies of the small results (one transfer each).
        worst_cpu = worst_curve.cpu()
        curves_cpu = model_curve.float().cpu()
        short_means = curves[:, :, :short].mean(1).float().cpu()
        constant_cpu = curves[1].mean(0).float().cpu()

        vals = scalars.tolist()
        metrics: dict[str, float] = {
            "mse_overall": vals[0],
            "mse_fit_window": vals[1],
            "mse_beyond": vals[2],
        }
        metrics.update(stability_metrics(worst_cpu, tu, horizon, threshold))
        for i, name in enumerate(BASELINES):
            metrics[BASELINE_METRICS[name]] = vals[3 + i]
        off = 3 + len(BASELINES)
        finite = vals[off] == 1.0
        best, worst = int(vals[off + 1]), int(vals[off + 2])

        ev = DatasetEval(
            metrics=metrics,
            finite=finite,
            rollout_steps=steps,
            tu=tu,
            horizon=horizon,
            starts=starts_cpu,
            curves=curves_cpu,
            constant_curve=constant_cpu,
            short={"model": short_means[0]}
            | {name: short_means[1 + i] for i, name in enumerate(BASELINES)},
            best_start=best,
            worst_start=worst,
        )
        if need_figures:
            assert truth_mom is not None and err_mom is not None
            var_t = truth_mom.variance()
            var_e = (
                err_mom.variance() if err_mom.m2 is not None else torch.full_like(var_t, math.nan)
            )
            for label, i in (("best", best), ("worst", worst)):
                ev.scatter[label] = {
                    "var_truth": var_t[i].float().cpu(),
                    "var_error": var_e[i].float().cpu(),
                }
            if tr_pred is not None and tr_idx is not None:
                ev.trace_neurons = tr_idx.cpu()
                tr_cpu = tr_idx.to(x.device)
                for label, i in (("best", best), ("worst", worst)):
                    s0 = int(starts_cpu[i])
                    truth_tr = x[s0 + 1 : s0 + steps + 1].index_select(1, tr_cpu)
                    ev.traces[label] = {
                        "truth": truth_tr.to(device="cpu", dtype=torch.float32),
                        "prediction": tr_pred[:, i].float().cpu(),
                    }
        return ev
    finally:
        model.train(was_training)


def _penalised(ev: DatasetEval, penalty_factor: float) -> tuple[float, bool]:
    """(penalty_factor x constant_mse_overall, whether this dataset's rollout is penalised)."""
    penalty = penalty_factor * ev.metrics["constant_mse_overall"]
    v = ev.metrics["mse_overall"]
    return penalty, not ev.finite or not math.isfinite(v) or v > penalty


def crossval_intervening_mse(evals: Mapping[str, DatasetEval], penalty_factor: float) -> float:
    """Mean over datasets of ``rollout_latent_2000step_mse_intervening``.

    A dataset that ``crossval_objective`` penalises (non-finite rollout, or rollout MSE above
    penalty_factor x constant_mse_overall), or whose value is NaN (tu == 1: nothing lies between
    loss points), contributes its finite penalty penalty_factor x constant_mse_overall instead:
    the lab's pre-divergence value would otherwise reward a model that is accurate for a few
    steps and then blows up.
    """
    if not evals:
        raise ValueError("no cross-validation datasets")
    vals = []
    for ev in evals.values():
        penalty, bad = _penalised(ev, penalty_factor)
        v = ev.metrics[f"{STABILITY_PREFIX}mse_intervening"]
        vals.append(penalty if bad or not math.isfinite(v) else v)
    return sum(vals) / len(vals)


def crossval_objective(
    evals: Mapping[str, DatasetEval], penalty_factor: float
) -> dict[str, float | bool]:
    """Tune objective (docs/method.md, section 8.4): mean over datasets of penalised rollout MSE.

    v_d = mse_overall, replaced by penalty_factor x constant_mse_overall when the rollout was
    non-finite or worse than that; ``diverged`` if any dataset was penalised or its worst start
    crossed the divergence threshold within the rollout.
    """
    if not evals:
        raise ValueError("no cross-validation datasets")
    values = []
    diverged = False
    for ev in evals.values():
        penalty, bad = _penalised(ev, penalty_factor)
        values.append(penalty if bad else ev.metrics["mse_overall"])
        first = ev.metrics[f"{STABILITY_PREFIX}first_divergence_step"]
        diverged = diverged or bad or first < ev.rollout_steps
    return {
        "crossval_rollout_mse": sum(values) / len(values),
        "crossval_intervening_mse": crossval_intervening_mse(evals, penalty_factor),
        "diverged": diverged,
    }
