"""The demo simulator's network: presets, cell types on hexagonal columns, wiring, scaled W.

Why apart from the dynamics: the network is the part a reader checks against the lab's data
(65 cell types, inputs first, a sparse signed connectome from type-to-type rules with spatial
offsets), and it is plain construction: `wire_network` draws it from a preset and a generator.
The recurrent weights are scaled so that the Perron root of |W| is `spectral_radius` < 1, which
makes the dynamics of `latent_tune.data.simulate` a contraction; that module's `build_network`
then calibrates each type's gains by short simulations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "LAB_TYPE_NAMES",
    "PRESETS",
    "ROLES",
    "Network",
    "SimPreset",
    "grey_bias",
    "perron_root",
    "wire_network",
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


def wire_network(p: SimPreset, rng: np.random.Generator) -> Network:
    """Cells on hexagonal columns, type-to-type wiring rules with spatial offsets, scaled W
    (before calibration: `latent_tune.data.simulate.build_network` scales it by simulation)."""
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
    return Network(
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
        bias=grey_bias(rest, pre, post, weight),
        noise=noise,
        noise_modes=modes,
        input_gain=input_gain,
        pre=pre,
        post=post,
        weight=weight,
        edge_kind=kind,
        rho=rho,
    )


def grey_bias(
    rest: np.ndarray, pre: np.ndarray, post: np.ndarray, weight: np.ndarray
) -> np.ndarray:
    """Biases that make `rest` the fixed point at a grey screen (s = 1/2) without noise."""
    n = rest.size
    w = sp.csr_matrix((weight, (post, pre)), shape=(n, n))
    return rest - w @ np.maximum(rest, 0.0)


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
