"""Demo-data simulator: a connectome-constrained rate network of cell types on hexagonal columns.

Why: the main command must run anywhere without the lab's data, and the search needs data that
is hard in the same ways as the lab's (METHOD.md section 2): photoreceptor-like input types
driven by stimulus movies, a sparse signed connectome from type-to-type rules with spatial
offsets, slow and fast types, a strongly recurrent module whose activity the stimulus alone does
not explain, process and measurement noise, and a low-pass (noisier) calcium quantity.

Dynamics (Euler, one step = dt), for neuron i with a_i = dt / tau_i <= 1:

    v_i <- (1 - a_i) v_i + a_i (b_i + sum_j w_ij relu(v_j) + g_i (s_i(t) - 1/2)) + noise_i(t)

The recurrent weights are scaled so that the Perron root of |W| equals `spectral_radius` < 1:
then the Euler map is a contraction in a weighted max-norm, so every run is bounded and forgets
its initial state (stable over any horizon, whatever the stimulus). Photoreceptors adapt to the
local mean luminance; the recurrent module also receives spatially smooth shared noise (input
from unmodelled areas). Each type's feedforward gain and the module's noise are calibrated on
short noise-free / noise-only runs so every seed lands on the METHOD.md sec 8 scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field
from scipy.signal import lfilter

from latent_tune.atomic import atomic_dir
from latent_tune.data.format import (
    FORMAT_VERSION,
    CrossvalEntry,
    SuiteManifest,
    TrainEntry,
    write_manifest,
)
from latent_tune.data.writer import DatasetWriter

__all__ = [
    "FAMILIES",
    "LAB_TYPE_NAMES",
    "PRESETS",
    "ROLES",
    "Network",
    "SimPreset",
    "build_network",
    "dataset_seeds",
    "perron_root",
    "render_stimulus",
    "simulate_arrays",
    "simulate_chunks",
    "simulate_suite",
]

# Roles (also the neuron `group`): inputs -> lamina -> (recurrent module) -> medulla -> lobula.
ROLES = ("input", "lamina", "medulla", "lobula", "recurrent")
_IN, _LA, _ME, _LO, _RC = range(5)

# The lab's 65 type names; a type's id is its index here (as in the lab's TYPE column).
# fmt: off
LAB_TYPE_NAMES = (
    "Am", "C2", "C3", "CT1(Lo1)", "CT1(M10)", "L1", "L2", "L3", "L4", "L5", "Lawf1", "Lawf2",
    "Mi1", "Mi10", "Mi11", "Mi12", "Mi13", "Mi14", "Mi15", "Mi2", "Mi3", "Mi4", "Mi9", "R1",
    "R2", "R3", "R4", "R5", "R6", "R7", "R8", "T1", "T2", "T2a", "T3", "T4a", "T4b", "T4c",
    "T4d", "T5a", "T5b", "T5c", "T5d", "Tm1", "Tm16", "Tm2", "Tm20", "Tm28", "Tm3", "Tm30",
    "Tm4", "Tm5Y", "Tm5a", "Tm5b", "Tm5c", "Tm9", "TmY10", "TmY13", "TmY14", "TmY15", "TmY18",
    "TmY3", "TmY4", "TmY5a", "TmY9",
)
# fmt: on

# Stimulus families: the training family and the cross-validation families.
FAMILIES = ("textures", "gratings", "flashes")

_HEX_DIRS = np.array([(1, 0), (0, 1), (-1, 1), (-1, 0), (0, -1), (1, -1)])


class SimPreset(BaseModel):
    """Sizes, lengths and dynamics parameters of one simulated suite (why: one named, recorded
    recipe per scale, so a suite is reproducible from (preset, seed))."""

    model_config = ConfigDict(extra="forbid")

    hex_radius: int = Field(ge=0, description="columns = 3 R (R + 1) + 1")
    lab_types: bool = Field(False, description="use the lab's 65 cell types (R1-R8 inputs)")
    role_counts: dict[str, int] = Field(
        default_factory=dict, description="types per role (generated names; ignored for lab)"
    )
    sparse_types: dict[str, int] = Field(
        default_factory=dict, description="type name -> number of cells (< columns)"
    )
    dt: float = Field(0.02, gt=0, description="seconds per step")
    train_steps: int = Field(ge=100)
    crossval_steps: int = Field(ge=100)
    burn_in: int = Field(ge=0, description="steps left out of every range (initial transient)")
    val_steps: int = Field(ge=1, description="validation = the last val_steps of training")
    chunk_steps: int = Field(2000, ge=1, description="steps simulated and written per chunk")
    # dynamics
    tau_steps: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "input": (1.0, 2.0),
            "lamina": (1.5, 3.0),
            "fast": (2.0, 5.0),
            "slow": (10.0, 30.0),
            "recurrent": (12.0, 40.0),
        },
        description="time-constant ranges in steps (tau >= 1 step)",
    )
    slow_fraction: float = Field(0.4, ge=0, le=1, description="medulla/lobula types that are slow")
    inhibitory_fraction: float = Field(0.35, ge=0, le=1)
    spectral_radius: float = Field(
        0.9, gt=0, lt=1, description="Perron root of |W| (set by the recurrent module)"
    )
    lateral_radius: float = Field(
        0.5, ge=0, lt=1, description="Perron root of the within-layer lateral connections"
    )
    ff_gain: float = Field(1.3, gt=0, description="summed |weight| of a type's feedforward input")
    input_gain: float = Field(1.6, gt=0, description="photoreceptor gain on (stimulus - 1/2)")
    adaptation: float = Field(
        0.8, ge=0, le=1, description="fraction of the local mean luminance adapted away"
    )
    adaptation_tau: float = Field(60.0, ge=1, description="luminance adaptation, steps")
    module_input_gain: float = Field(
        0.25, gt=0, description="feedforward drive into the module (its loop amplifies it)"
    )
    module_output_gain: float = Field(
        0.3, gt=0, description="module share of a downstream type's feedforward input"
    )
    module_rest: tuple[float, float] = Field(
        (0.3, 0.5), description="operating points of recurrent types (their loop stays active)"
    )
    rest_range: tuple[float, float] = Field(
        (0.05, 0.4), description="type operating points at a grey screen (biases solve for them)"
    )
    process_noise: float = Field(0.05, ge=0, description="stationary std of a lone unit's noise")
    module_noise: float = Field(
        0.15, ge=0, description="std of the recurrent types' noise-driven (internal) activity"
    )
    module_noise_modes: int = Field(
        4, ge=0, description="smooth spatial noise modes shared by the recurrent types"
    )
    module_shared_fraction: float = Field(0.8, ge=0, le=1, description="shared noise variance")
    measurement_noise: float = Field(0.05, ge=0, description="voltage measurement noise std")
    calcium_tau: float = Field(8.0, ge=1, description="calcium low-pass time constant, steps")
    calcium_noise: float = Field(0.05, ge=0, description="calcium measurement noise std")
    edge_jitter: float = Field(0.2, ge=0, description="log-normal per-edge weight jitter")
    type_std_range: tuple[float, float] = Field(
        (0.12, 0.5), description="stimulus-driven std per type (calibrated), drawn per type"
    )
    module_stim_std: float = Field(0.2, gt=0, description="stimulus-driven std, recurrent types")
    calibration_steps: int = Field(4000, ge=100)
    calibration_passes: int = Field(3, ge=0)


PRESETS: dict[str, SimPreset] = {
    "tiny": SimPreset(
        hex_radius=1,
        role_counts={"input": 2, "lamina": 4, "medulla": 5, "lobula": 2, "recurrent": 3},
        train_steps=12_000,
        crossval_steps=2_500,
        burn_in=500,
        val_steps=1_800,
        chunk_steps=2_500,
    ),
    "demo": SimPreset(
        hex_radius=4,
        role_counts={"input": 4, "lamina": 4, "medulla": 5, "lobula": 3, "recurrent": 4},
        train_steps=40_000,
        crossval_steps=10_000,
        burn_in=1_000,
        val_steps=6_000,
        chunk_steps=2_000,
    ),
    "lab": SimPreset(
        hex_radius=8,
        lab_types=True,
        sparse_types={"CT1(Lo1)": 35, "CT1(M10)": 35},
        train_steps=1_000_000,
        crossval_steps=20_000,
        burn_in=5_120,
        val_steps=15_000,
        chunk_steps=1_000,
    ),
}


@dataclass(frozen=True)
class Network:
    """A simulated network: neurons (type-major, inputs first), connectome and unit parameters."""

    col_q: np.ndarray  # (C,) axial hex coordinates
    col_r: np.ndarray
    type_names: list[str]  # (K,) name of each type id
    type_role: np.ndarray  # (K,) role index into ROLES
    type_tau: np.ndarray  # (K,) mean time constant of the type, steps
    neuron_type: np.ndarray  # (N,) type id
    neuron_col: np.ndarray  # (N,) column index
    x: np.ndarray  # (N,) position (column units)
    y: np.ndarray
    n_stimulus: int  # the first S neurons are the inputs
    stim_dx: np.ndarray  # (S,) optical-axis offset of each input
    stim_dy: np.ndarray
    tau: np.ndarray  # (N,) steps
    rest: np.ndarray  # (N,) operating point at a grey screen
    bias: np.ndarray  # (N,)
    noise: np.ndarray  # (N,) stationary std of independent process noise
    noise_modes: np.ndarray  # (M, N) stationary loadings of shared (spatially smooth) noise
    input_gain: np.ndarray  # (S,)
    pre: np.ndarray  # (E,) int64
    post: np.ndarray
    weight: np.ndarray  # (E,) float64, signed
    edge_kind: np.ndarray  # (E,) 0 feedforward, 1 recurrent, 2 recurrent-module internal
    rho: float  # Perron root of |W|

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_type.size)

    @property
    def group(self) -> np.ndarray:
        """Role of each neuron (stored as the `group` column)."""
        return self.type_role[self.neuron_type]

    def matrix(self, kinds: tuple[int, ...] = (0, 1, 2)) -> sp.csr_matrix:
        """W (post x pre) restricted to the given edge kinds (why: tests cut recurrence)."""
        keep = np.isin(self.edge_kind, kinds)
        n = self.n_neurons
        return sp.csr_matrix((self.weight[keep], (self.post[keep], self.pre[keep])), shape=(n, n))


# ---------------------------------------------------------------------------------------------
# network construction


def _hex_columns(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial coordinates of a hexagon of columns, centre first, ring by ring."""
    q, r = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1))
    q, r = q.ravel(), r.ravel()
    ring = np.maximum(np.maximum(np.abs(q), np.abs(r)), np.abs(q + r))
    keep = ring <= radius
    q, r, ring = q[keep], r[keep], ring[keep]
    x, y = q + r / 2.0, r * math.sqrt(3) / 2.0
    order = np.lexsort((np.arctan2(y, x), ring))
    return q[order], r[order]


def _xy(q: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return q + r / 2.0, r * math.sqrt(3) / 2.0


def _offsets(radius: int) -> np.ndarray:
    q, r = _hex_columns(radius)
    return np.stack([q, r], axis=1)


def _lab_roles() -> list[int]:
    roles = []
    for name in LAB_TYPE_NAMES:
        if name.startswith("R"):
            roles.append(_IN)
        elif name[0] == "L" and name[1].isdigit():
            roles.append(_LA)
        elif name in ("Am", "C2", "C3", "Lawf1", "Lawf2") or name.startswith("CT1"):
            roles.append(_RC)
        elif name.startswith(("Mi", "Tm")) and not name.startswith("TmY"):
            roles.append(_ME)
        else:  # T1-T5, TmY
            roles.append(_LO)
    return roles


def _types(p: SimPreset) -> tuple[list[str], np.ndarray]:
    if p.lab_types:
        return list(LAB_TYPE_NAMES), np.array(_lab_roles())
    prefix = {"input": "R", "lamina": "La", "medulla": "Me", "lobula": "Lo", "recurrent": "Rec"}
    unknown = set(p.role_counts) - set(ROLES)
    if unknown or p.role_counts.get("input", 0) < 1:
        raise ValueError(f"role_counts needs an input count and roles from {ROLES}")
    names, roles = [], []
    for k, role in enumerate(ROLES):
        for i in range(p.role_counts.get(role, 0)):
            names.append(f"{prefix[role]}{i + 1}")
            roles.append(k)
    return names, np.array(roles)


def _noise_modes(
    rng: np.random.Generator,
    *,
    x: np.ndarray,
    y: np.ndarray,
    shared: np.ndarray,
    n_modes: int,
) -> np.ndarray:
    """Smooth random spatial fields (unit RMS) over the shared-noise neurons: (M, N) loadings.

    Why: independent noise averages out in a wide recurrent module; input shared across
    columns and types (feedback from unmodelled areas) excites the module's slow mode and keeps
    a low-dimensional, stimulus-independent state that a latent model must carry."""
    rows = np.zeros((n_modes, x.size))
    for i in range(n_modes):
        k = rng.normal(size=2)
        k *= 2 * np.pi / rng.uniform(6.0, 20.0) / np.linalg.norm(k)
        field = np.cos(k[0] * x[shared] + k[1] * y[shared] + rng.uniform(0, 2 * np.pi)) + 0.5
        rows[i, shared] = field / np.sqrt(np.mean(field**2)) / math.sqrt(n_modes)
    return rows


def perron_root(a: sp.csr_matrix, iters: int = 400) -> float:
    """Upper bound on the spectral radius of a nonnegative matrix (Collatz-Wielandt).

    Power iteration on A + I (aperiodic, same Perron vector) from a positive start; the max
    ratio bounds the root from above for any positive vector, so scaling by it is safe."""
    n = a.shape[0]
    b = a + sp.identity(n, format="csr")
    x = np.ones(n)
    upper = np.inf
    for _ in range(iters):
        y = b @ x
        ratio = y / x
        upper, lower = float(ratio.max()), float(ratio.min())
        x = np.maximum(y / y.max(), 1e-250)  # stays positive (no 0/0 on decaying parts)
        if upper - lower < 1e-6 * upper:
            break
    return upper - 1.0


def build_network(p: SimPreset, rng: np.random.Generator) -> Network:
    """Cells on hexagonal columns, type-to-type wiring rules with spatial offsets, scaled W."""
    names, role = _types(p)
    k_types = len(names)
    cq, cr = _hex_columns(p.hex_radius)
    n_col = cq.size
    # which columns each type occupies (sparse types: evenly spread subset)
    present = np.ones((k_types, n_col), dtype=bool)
    for tname, count in p.sparse_types.items():
        if tname not in names or not 0 < count <= n_col:
            raise ValueError(f"sparse_types: {tname!r} unknown or count {count} out of range")
        present[names.index(tname)] = False
        present[names.index(tname), np.linspace(0, n_col - 1, count).round().astype(int)] = True
    # neuron order: input types first (type-major, columns within), then the rest by type id
    type_order = np.concatenate([np.flatnonzero(role == _IN), np.flatnonzero(role != _IN)])
    t_idx, c_idx = np.nonzero(present[type_order])
    neuron_type, neuron_col = type_order[t_idx], c_idx
    n = neuron_type.size
    cell = -np.ones((k_types, n_col), dtype=np.int64)  # neuron index of (type, column)
    cell[neuron_type, neuron_col] = np.arange(n)
    s = int(np.isin(neuron_type, np.flatnonzero(role == _IN)).sum())
    x, y = _xy(cq[neuron_col], cr[neuron_col])

    # per-type unit parameters
    slow = rng.random(k_types) < p.slow_fraction
    tau_key = np.array(["input", "lamina", "fast", "fast", "recurrent"])[role]
    tau_key = np.where(slow & ((role == _ME) | (role == _LO)), "slow", tau_key)
    lo = np.array([p.tau_steps[k][0] for k in tau_key])
    hi = np.array([p.tau_steps[k][1] for k in tau_key])
    type_tau = np.maximum(1.0, np.exp(rng.uniform(np.log(lo), np.log(hi))))
    sign = np.where(rng.random(k_types) < p.inhibitory_fraction, -1.0, 1.0)
    sign[role == _IN] = 1.0
    rc = np.flatnonzero(role == _RC)
    sign[rc] = 1.0  # an excitatory module: its Perron mode is a slow, shared, noise-driven mode
    type_rest = rng.uniform(*p.rest_range, size=k_types)
    type_rest[rc] = rng.uniform(*p.module_rest, size=rc.size)
    type_noise = np.where(role == _RC, p.module_noise, p.process_noise) * rng.uniform(
        0.5, 1.5, size=k_types
    )
    tau = type_tau[neuron_type] * rng.uniform(0.9, 1.1, size=n)
    tau = np.maximum(tau, 1.0)
    rest = type_rest[neuron_type] + 0.03 * rng.standard_normal(n)
    noise = type_noise[neuron_type]
    shared = (role == _RC)[neuron_type]
    modes = _noise_modes(rng, x=x, y=y, shared=shared, n_modes=p.module_noise_modes)
    modes *= (noise * math.sqrt(p.module_shared_fraction))[None, :]
    noise = np.where(shared, noise * math.sqrt(1.0 - p.module_shared_fraction), noise)
    input_gain = p.input_gain * rng.uniform(0.7, 1.3, size=k_types)[neuron_type[:s]]
    type_dxy = rng.uniform(-0.3, 0.3, size=(k_types, 2))
    stim_dx, stim_dy = type_dxy[neuron_type[:s], 0], type_dxy[neuron_type[:s], 1]

    # wiring rules: (pre type, post type, offsets, gain, kind)
    off = _offsets(2)
    ring = np.maximum(np.maximum(np.abs(off[:, 0]), np.abs(off[:, 1])), np.abs(off.sum(1)))
    by_role = {k: np.flatnonzero(role == k) for k in range(len(ROLES))}
    sources = {  # post role -> [(pre role, how many rules, kind)]; kind 0 ff, 1 rec, 2 module
        _LA: [(_IN, 2, 0), (_LA, 1, 1)],
        _ME: [(_LA, 2, 0), (_IN, 1, 0), (_ME, 1, 1), (_RC, 1, 0)],
        _LO: [(_ME, 3, 0), (_LA, 1, 0), (_LO, 1, 1), (_RC, 1, 0)],
        _RC: [(_LA, 1, 0), (_RC, 3, 2)],
    }
    pre_l, post_l, w_l, kind_l = [], [], [], []
    for post_t in range(k_types):
        if role[post_t] == _IN:
            continue
        rules = []
        for pre_role, count, kind in sources[role[post_t]]:
            cands = by_role[pre_role]
            if cands.size == 0:
                continue
            chosen = rng.choice(cands, size=min(count, cands.size), replace=False)
            rules += [(int(q), kind) for q in chosen]
        ff_total = sum(1 for _, kd in rules if kd == 0)
        for pre_t, kind in rules:
            mode = rng.choice(4, p=[0.3, 0.3, 0.25, 0.15]) if kind != 2 else 3
            if mode == 0:  # same column
                sel = ring == 0
            elif mode == 1:  # nearest neighbours
                sel = ring <= 1
            elif mode == 2:  # directional: centre + one direction (motion-sensitive wiring)
                d = _HEX_DIRS[rng.integers(6)]
                sel = (ring == 0) | ((off[:, 0] == d[0]) & (off[:, 1] == d[1]))
                sel |= (off[:, 0] == 2 * d[0]) & (off[:, 1] == 2 * d[1])
            else:  # wide lateral spread
                sel = ring <= 2
            o = off[sel]
            kern = 0.5 ** ring[sel]
            kern = kern / kern.sum()
            gain = rng.uniform(0.6, 1.4)
            if kind == 0:
                gain *= p.ff_gain / max(ff_total, 1)
                gain *= p.module_input_gain if role[post_t] == _RC else 1.0
                gain *= p.module_output_gain if role[pre_t] == _RC else 1.0
            # post cells of this type, pre cell at each offset (if inside and present)
            post_cells = np.flatnonzero(present[post_t])
            tq = cq[post_cells][:, None] + o[None, :, 0]
            tr = cr[post_cells][:, None] + o[None, :, 1]
            col = _col_lookup(cq, cr, tq, tr)
            ok = col >= 0
            pre_idx = np.where(ok, cell[pre_t, np.maximum(col, 0)], -1)
            ok &= pre_idx >= 0
            post_idx = np.broadcast_to(cell[post_t, post_cells][:, None], ok.shape)
            # renormalise over the present inputs: border cells get the same total drive
            k_ok = kern[None, :] * ok
            w = sign[pre_t] * gain * k_ok / np.maximum(k_ok.sum(1, keepdims=True), 1e-12)
            pre_l.append(pre_idx[ok])
            post_l.append(post_idx[ok])
            w_l.append(w[ok])
            kind_l.append(np.full(int(ok.sum()), kind, dtype=np.int8))
    pre = np.concatenate(pre_l).astype(np.int64)
    post = np.concatenate(post_l).astype(np.int64)
    weight = np.concatenate(w_l) * np.exp(p.edge_jitter * rng.standard_normal(pre.size))
    kind = np.concatenate(kind_l)
    # merge duplicate (pre, post) pairs (two rules may hit the same pair)
    key = post * n + pre
    uniq, inv = np.unique(key, return_inverse=True)
    weight = np.bincount(inv, weights=weight, minlength=uniq.size)
    kind = np.maximum.reduceat(kind[np.argsort(inv, kind="stable")], _starts(np.sort(inv)))
    post, pre = uniq // n, uniq % n

    # scale the recurrent edges so that the Perron root of |W| is the target
    radius = {1: min(p.lateral_radius, p.spectral_radius), 2: p.spectral_radius}
    weight, rho = _scale_recurrent(pre=pre, post=post, weight=weight, kind=kind, n=n, radius=radius)
    net = Network(
        col_q=cq,
        col_r=cr,
        type_names=names,
        type_role=role,
        type_tau=type_tau,
        neuron_type=neuron_type.astype(np.int64),
        neuron_col=neuron_col.astype(np.int64),
        x=x,
        y=y,
        n_stimulus=s,
        stim_dx=stim_dx,
        stim_dy=stim_dy,
        tau=tau,
        rest=rest,
        bias=_bias(rest, pre, post, weight),
        noise=noise,
        noise_modes=modes,
        input_gain=input_gain,
        pre=pre,
        post=post,
        weight=weight,
        edge_kind=kind,
        rho=rho,
    )
    return _calibrate(net, p, int(rng.integers(2**31)))


def _bias(rest: np.ndarray, pre: np.ndarray, post: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Biases that make `rest` the fixed point at a grey screen (s = 1/2) without noise."""
    n = rest.size
    w = sp.csr_matrix((weight, (post, pre)), shape=(n, n))
    return rest - w @ np.maximum(rest, 0.0)


def _type_std(net: Network, x: np.ndarray) -> np.ndarray:
    """Mean per-neuron temporal std of each type (K,)."""
    k = len(net.type_names)
    sd = x.std(0)
    return np.bincount(net.neuron_type, sd, k) / np.maximum(
        np.bincount(net.neuron_type, None, k), 1
    )


def _calibrate(net: Network, p: SimPreset, seed: int) -> Network:
    """Set each type's scale from short noise-free and noise-only runs (why: random wiring
    alone gives types from silent to exploding; the search needs every seed on the METHOD.md
    sec 8 scale, with a module whose activity is partly stimulus-driven, partly internal).

    Feedforward weights into a type scale its stimulus-driven std toward a per-type target
    (they lie on no cycle, so stability is untouched); the module's shared noise scales its
    internal std. A few passes, since upstream scales move downstream ones."""
    rng = np.random.default_rng(seed)
    k_types = len(net.type_names)
    lo, hi = p.type_std_range  # spread evenly (log), shuffled: types surely differ
    target = rng.permutation(np.exp(np.linspace(np.log(lo), np.log(hi), k_types)))
    target[net.type_role == _RC] = p.module_stim_std
    steps, skip = p.calibration_steps, p.calibration_steps // 5
    stim = _Family("textures", net, steps, seed).render(0, steps)
    grey = np.full_like(stim, 0.5)
    free = net.type_role != _IN
    rec = net.type_role == _RC
    quiet = {"process_noise": False, "measurement_noise": False}
    for _ in range(p.calibration_passes):
        acts, _ = simulate_arrays(net, p, "textures", steps, seed, stimulus=stim, **quiet)
        sd = _type_std(net, acts["voltage"][skip:].astype(np.float64))
        f_type = np.where(free, np.clip(target / np.maximum(sd, 1e-6), 1 / 3, 3.0), 1.0)
        f_edge = np.where(net.edge_kind == 0, f_type[net.neuron_type[net.post]], 1.0)
        weight = net.weight * f_edge
        net = replace(net, weight=weight, bias=_bias(net.rest, net.pre, net.post, weight))
        if rec.any() and net.noise_modes.shape[0]:
            acts, _ = simulate_arrays(
                net, p, "textures", steps, seed, stimulus=grey, measurement_noise=False
            )
            sd = _type_std(net, acts["voltage"][skip:].astype(np.float64))
            g_type = np.where(rec, np.clip(p.module_noise / np.maximum(sd, 1e-6), 1 / 3, 3), 1)
            g = g_type[net.neuron_type]
            net = replace(net, noise=net.noise * g, noise_modes=net.noise_modes * g[None, :])
    return net


def _starts(sorted_ids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])


def _col_lookup(cq: np.ndarray, cr: np.ndarray, tq: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """Column index of axial coordinates (tq, tr), -1 outside the hexagon (vectorised)."""
    r_max = int(max(np.abs(cq).max(), np.abs(cr).max())) + 3
    grid = -np.ones((2 * r_max + 1, 2 * r_max + 1), dtype=np.int64)
    grid[cq + r_max, cr + r_max] = np.arange(cq.size)
    inside = (np.abs(tq) <= r_max) & (np.abs(tr) <= r_max)
    out = np.full(tq.shape, -1, dtype=np.int64)
    out[inside] = grid[tq[inside] + r_max, tr[inside] + r_max]
    return out


def _scale_recurrent(
    *,
    pre: np.ndarray,
    post: np.ndarray,
    weight: np.ndarray,
    kind: np.ndarray,
    n: int,
    radius: dict[int, float],
) -> tuple[np.ndarray, float]:
    """Scale each recurrent edge kind to its Perron root; return the weights and rho(|W|).

    Feedforward edges go strictly up the role order, lateral edges (kind 1) stay within a
    layer and module edges (kind 2) within the module: every cycle lies inside one kind, so
    rho(|W|) is the largest of the per-kind roots and each is set exactly by one scale."""
    weight = weight.copy()
    for k, target in radius.items():
        sel = kind == k
        if sel.any():
            a = sp.csr_matrix((np.abs(weight[sel]), (post[sel], pre[sel])), shape=(n, n))
            root = perron_root(a)
            if root > 0:
                weight[sel] *= target / root
    rho = perron_root(sp.csr_matrix((np.abs(weight), (post, pre)), shape=(n, n)))
    return weight, rho


# ---------------------------------------------------------------------------------------------
# stimulus families


def _segments(rng: np.random.Generator, n_steps: int, lo: int, hi: int) -> np.ndarray:
    """Segment start times covering [0, n_steps) with durations uniform in [lo, hi]."""
    n_max = n_steps // lo + 2
    starts = np.concatenate([[0], np.cumsum(rng.integers(lo, hi + 1, size=n_max))])
    return np.append(starts[starts < n_steps], n_steps)


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Periodic 1/f^beta noise texture, zero mean, unit std (natural-image-like spectrum)."""
    beta = rng.uniform(1.6, 2.4)
    fx = np.fft.fftfreq(size)[:, None]
    fy = np.fft.fftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spec = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / f ** (
        beta / 2
    )
    spec[0, 0] = 0.0
    tex = np.fft.ifft2(spec).real
    return (tex - tex.mean()) / tex.std()


def _bilinear(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample a periodic texture at fractional pixel coordinates (vectorised)."""
    size = tex.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    i0, j0 = u0.astype(np.int64) % size, v0.astype(np.int64) % size
    i1, j1 = (i0 + 1) % size, (j0 + 1) % size
    return (
        tex[i0, j0] * (1 - fu) * (1 - fv)
        + tex[i1, j0] * fu * (1 - fv)
        + tex[i0, j1] * (1 - fu) * fv
        + tex[i1, j1] * fu * fv
    )


class _Family:
    """A stimulus movie of one family for n_steps, rendered in any window [t0, t1).

    The segment schedule and each segment's parameters depend only on the seed, so chunks
    concatenate to the same movie whatever the chunk size."""

    def __init__(
        self,
        family: str,
        net: Network,
        n_steps: int,
        seed: int,
        segments: tuple[int, int] | None = None,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown stimulus family {family!r} (one of {FAMILIES})")
        self.family = family
        self.seed = seed
        self.px = net.x[: net.n_stimulus] + net.stim_dx  # (S,) optical axes
        self.py = net.y[: net.n_stimulus] + net.stim_dy
        self.col = net.neuron_col[: net.n_stimulus]
        self.extent = float(np.sqrt(self.px**2 + self.py**2).max()) if self.px.size else 0.0
        rng = np.random.default_rng([seed, 0])
        default = {"textures": (150, 800), "gratings": (80, 300), "flashes": (15, 120)}[family]
        lo, hi = segments or default
        self.bounds = _segments(rng, n_steps, lo, hi)
        self._cache: tuple[int, Any] | None = None

    def _params(self, k: int) -> dict[str, Any]:
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, 1, k])
        if self.family == "textures":
            speed = rng.lognormal(np.log(0.15), 0.6)
            ang = rng.uniform(0, 2 * np.pi)
            prm = {
                "tex": _texture(rng),
                "px": rng.uniform(0.3, 0.8),  # texture pixel size in columns
                "vel": speed * np.array([np.cos(ang), np.sin(ang)]),
                "wob": rng.uniform(0, 2.0, size=2),  # saccade-like wobble amplitude, columns
                "wob_period": rng.uniform(40, 250),
                "phase": rng.uniform(0, 2 * np.pi),
                "origin": rng.uniform(0, 64, size=2),
                "mean": rng.uniform(0.35, 0.65),
                "contrast": rng.uniform(0.1, 0.3),
            }
        elif self.family == "gratings":
            ang = rng.uniform(0, 2 * np.pi)
            prm = {
                "kind": int(rng.integers(2)),  # 0 drifting grating, 1 moving edge
                "dir": np.array([np.cos(ang), np.sin(ang)]),
                "wavelength": rng.uniform(2.0, 8.0),
                "speed": rng.uniform(0.03, 0.4),
                "contrast": rng.uniform(0.3, 1.0),
                "phase": rng.uniform(0, 2 * np.pi),
                "polarity": float(rng.choice([-1.0, 1.0])),
                "start": -self.extent - rng.uniform(0.0, 2.0),  # edges enter the array
            }
        else:
            kind = int(rng.integers(3))  # 0 full-field flash, 1 flicker noise, 2 spot
            prm = {
                "kind": kind,
                "level": rng.uniform(0.0, 1.0),
                "refresh": int(rng.choice([1, 2, 4, 8])),
                "contrast": rng.uniform(0.3, 1.0),
                "noise": rng.random((400, int(self.col.max()) + 1)),
                "centre": rng.uniform(-3, 3, size=2),
                "radius": rng.uniform(0.8, 3.0),
            }
        self._cache = (k, prm)
        return prm

    def render(self, t0: int, t1: int) -> np.ndarray:
        """(t1 - t0, S) luminance in [0, 1]."""
        out = np.empty((t1 - t0, self.px.size), dtype=np.float64)
        k0 = int(np.searchsorted(self.bounds, t0, side="right")) - 1
        k1 = int(np.searchsorted(self.bounds, t1 - 1, side="right")) - 1
        for k in range(k0, k1 + 1):
            a, b = max(t0, self.bounds[k]), min(t1, self.bounds[k + 1])
            tt = np.arange(a, b, dtype=np.float64)[:, None] - self.bounds[k]
            out[a - t0 : b - t0] = self._render_segment(self._params(k), tt)
        return np.clip(out, 0.0, 1.0)

    def _render_segment(self, prm: dict[str, Any], tt: np.ndarray) -> np.ndarray:
        px, py = self.px[None, :], self.py[None, :]
        if self.family == "textures":
            wob = np.sin(2 * np.pi * tt / prm["wob_period"] + prm["phase"])
            ox = prm["vel"][0] * tt + prm["wob"][0] * wob
            oy = prm["vel"][1] * tt + prm["wob"][1] * wob
            u = (px - ox) / prm["px"] + prm["origin"][0]
            v = (py - oy) / prm["px"] + prm["origin"][1]
            return prm["mean"] + prm["contrast"] * _bilinear(prm["tex"], u, v)
        if self.family == "gratings":
            proj = px * prm["dir"][0] + py * prm["dir"][1]
            if prm["kind"] == 0:
                arg = 2 * np.pi * (proj - prm["speed"] * tt) / prm["wavelength"] + prm["phase"]
                return 0.5 + 0.5 * prm["contrast"] * np.sin(arg)
            front = prm["start"] + prm["speed"] * tt
            return 0.5 + 0.5 * prm["contrast"] * prm["polarity"] * np.tanh((front - proj) / 0.5)
        if prm["kind"] == 0:
            return np.broadcast_to(prm["level"], (tt.shape[0], px.shape[1]))
        if prm["kind"] == 1:
            frame = (tt[:, 0].astype(np.int64) // prm["refresh"]) % prm["noise"].shape[0]
            vals = prm["noise"][frame][:, self.col]
            return 0.5 + prm["contrast"] * (np.round(vals) - 0.5)
        d2 = (px - prm["centre"][0]) ** 2 + (py - prm["centre"][1]) ** 2
        spot = (d2 <= prm["radius"] ** 2).astype(np.float64)
        lvl = 0.5 + 0.5 * prm["contrast"] * (2 * prm["level"] - 1) * spot
        return np.broadcast_to(lvl, (tt.shape[0], px.shape[1]))


def render_stimulus(family: str, net: Network, n_steps: int, seed: int) -> np.ndarray:
    """The whole (n_steps, S) stimulus movie of a family (for tests and small runs)."""
    return _Family(family, net, n_steps, seed).render(0, n_steps)


# ---------------------------------------------------------------------------------------------
# dynamics


def simulate_chunks(
    net: Network,
    p: SimPreset,
    family: str,
    n_steps: int,
    seed: int,
    *,
    chunk_steps: int | None = None,
    kinds: tuple[int, ...] = (0, 1, 2),
    stimulus: np.ndarray | None = None,
    process_noise: bool = True,
    measurement_noise: bool = True,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Yield ({"voltage", "calcium"} (t, N) float32, stimulus (t, S) float32) chunk by chunk.

    `kinds` restricts the connectome (tests remove recurrence); `stimulus` replaces the
    family's movie (tests hold it fixed while changing the noise seed); the noise flags switch
    the noise off (tests read step responses)."""
    chunk = chunk_steps or p.chunk_steps
    n, s = net.n_neurons, net.n_stimulus
    a = 1.0 / net.tau  # dt / tau, tau in steps
    w_a = sp.diags(a) @ net.matrix(kinds)
    w_a = sp.csr_matrix(w_a)
    one_minus_a = 1.0 - a
    step_scale = np.sqrt(a * (2.0 - a)) if process_noise else np.zeros(n)
    step_noise = net.noise * step_scale
    step_modes = net.noise_modes * step_scale[None, :]
    drive_const = a * net.bias
    gain_s = a[:s] * net.input_gain
    fam = _Family(family, net, n_steps, seed) if stimulus is None else None
    # one generator per noise stream: the result does not depend on the chunk size
    rng_proc, rng_modes, rng_volt, rng_ca = (np.random.default_rng([seed, i]) for i in (2, 3, 4, 5))
    a_ca = 1.0 / p.calcium_tau
    v = net.bias.copy()
    ca_state = (1.0 - a_ca) * v[None, :]  # lfilter state: the filter starts at rest
    a_ad = 1.0 / p.adaptation_tau
    ad_state = np.full((1, s), (1.0 - a_ad) * 0.5)  # adapted to grey at the start
    for t0 in range(0, n_steps, chunk):
        t1 = min(n_steps, t0 + chunk)
        m = t1 - t0
        stim = fam.render(t0, t1) if fam is not None else stimulus[t0:t1]
        ext = rng_proc.standard_normal((m, n), dtype=np.float32) * step_noise
        if step_modes.shape[0]:
            ext += rng_modes.standard_normal((m, step_modes.shape[0])) @ step_modes
        ext += drive_const
        # photoreceptors adapt to the local mean luminance (transient, like the fly's)
        mean_lum, ad_state = lfilter([a_ad], [1.0, a_ad - 1.0], stim, axis=0, zi=ad_state)
        ext[:, :s] += gain_s * (stim - 0.5 - p.adaptation * (mean_lum - 0.5))
        out = np.empty((m, n))
        for t in range(m):
            r = np.maximum(v, 0.0)
            v = one_minus_a * v + w_a @ r + ext[t]
            out[t] = v
        ca, ca_state = lfilter([a_ca], [1.0, a_ca - 1.0], out, axis=0, zi=ca_state)
        volt, sig_v, sig_c = out, p.measurement_noise, p.calcium_noise
        if measurement_noise:
            volt = out + sig_v * rng_volt.standard_normal((m, n))
            ca = ca + sig_c * rng_ca.standard_normal((m, n))
        yield (
            {"voltage": volt.astype(np.float32), "calcium": ca.astype(np.float32)},
            stim.astype(np.float32),
        )


def simulate_arrays(
    net: Network, p: SimPreset, family: str, n_steps: int, seed: int, **kw: Any
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Whole arrays in memory (for tests and calibration; the suite streams instead)."""
    parts = list(simulate_chunks(net, p, family, n_steps, seed, **kw))
    acts = {q: np.concatenate([c[0][q] for c in parts]) for q in ("voltage", "calcium")}
    return acts, np.concatenate([c[1] for c in parts])


# ---------------------------------------------------------------------------------------------
# suite


def dataset_seeds(seed: int) -> dict[str, int]:
    """Independent seeds for the network and each dataset of a suite (why: one seed, no
    accidental correlation between the network draw and the datasets' noise)."""
    children = np.random.SeedSequence(seed).spawn(1 + len(FAMILIES))
    keys = ("network", *FAMILIES)
    return {k: int(c.generate_state(1, dtype=np.uint32)[0]) for k, c in zip(keys, children)}


def simulate_suite(
    out: Path, preset: str = "demo", seed: int = 0, overrides: Mapping[str, Any] | None = None
) -> Path:
    """Simulate a suite (training set `train`, cross-validation `gratings`, `flashes`) into
    `out`, atomically: a reader never sees a half-written suite.

    `overrides` replaces preset fields (e.g. `{"train_steps": 200_000}` for a shorter lab
    suite); they are validated like the preset and recorded in every header."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (one of {sorted(PRESETS)})")
    p = PRESETS[preset]
    if overrides:
        p = SimPreset.model_validate({**p.model_dump(), **dict(overrides)})
    seeds = dataset_seeds(seed)
    net = build_network(p, np.random.default_rng(seeds["network"]))
    datasets = [
        ("train", "textures", p.train_steps),
        *[(fam, fam, p.crossval_steps) for fam in FAMILIES[1:]],
    ]
    out = Path(out)
    with atomic_dir(out) as tmp:
        for name, family, n_steps in datasets:
            _write_dataset(
                tmp / name,
                net,
                p,
                preset=preset,
                seed=seed,
                family=family,
                n_steps=n_steps,
                data_seed=seeds[family],
            )
        t_val = p.train_steps - p.val_steps
        manifest = SuiteManifest(
            format_version=FORMAT_VERSION,
            name=f"{preset}-seed{seed}",
            preset=preset,
            seed=seed,
            train=TrainEntry(
                dataset="train", train_range=(p.burn_in, t_val), val_range=(t_val, p.train_steps)
            ),
            crossval=[
                CrossvalEntry(name=fam, dataset=fam, range=(p.burn_in, p.crossval_steps))
                for fam in FAMILIES[1:]
            ],
        )
        write_manifest(tmp, manifest)
    return out


def _write_dataset(
    path: Path,
    net: Network,
    p: SimPreset,
    *,
    preset: str,
    seed: int,
    family: str,
    n_steps: int,
    data_seed: int,
) -> None:
    provenance = {
        "generator": "latent_tune.data.simulate",
        "preset": preset,
        "seed": seed,
        "stimulus_family": family,
        "dataset_seed": data_seed,
        "spectral_radius_abs_w": net.rho,
        "n_edges": int(net.pre.size),
        "params": p.model_dump(mode="json"),
    }
    with DatasetWriter(
        path,
        name=f"{preset}-seed{seed}-{family}",
        dt=p.dt,
        n_steps=n_steps,
        n_neurons=net.n_neurons,
        n_stimulus=net.n_stimulus,
        quantities=("voltage", "calcium"),
        provenance=provenance,
    ) as w:
        w.set_neurons(
            np.arange(net.n_neurons),
            net.x,
            net.y,
            net.group,
            net.neuron_type,
            np.asarray(net.type_names, dtype=object)[net.neuron_type],
        )
        w.set_connectome(net.pre, net.post, net.weight)
        for acts, stim in simulate_chunks(net, p, family, n_steps, data_seed):
            w.append(acts, stim)
