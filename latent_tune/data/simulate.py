"""Demo-data simulator: a connectome-constrained rate network of cell types on hexagonal columns.

Why: the main command must run anywhere without the lab's data, and the search needs data that
is hard in the same ways as the lab's (docs/method.md, section 2): photoreceptor-like input types
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
short noise-free / noise-only runs: each seed lands on the lab's scale (docs/method.md, section 2).

The network itself (presets, cell types, wiring) is in `latent_tune.data.network`, the stimulus
movies in `latent_tune.data.stimulus`; this module runs the dynamics and writes suites.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.signal import lfilter

from latent_tune.atomic import atomic_dir
from latent_tune.data.format import (
    FORMAT_VERSION,
    CrossvalEntry,
    SuiteManifest,
    TrainEntry,
    write_manifest,
)
from latent_tune.data.network import (
    PRESETS,
    ROLES,
    Network,
    SimPreset,
    grey_bias,
    wire_network,
)
from latent_tune.data.stimulus import FAMILIES, StimulusMovie
from latent_tune.data.writer import DatasetWriter

__all__ = [
    "build_network",
    "dataset_seeds",
    "simulate_arrays",
    "simulate_chunks",
    "simulate_suite",
]

_IN, _RC = ROLES.index("input"), ROLES.index("recurrent")


def build_network(p: SimPreset, rng: np.random.Generator) -> Network:
    """The suite's network: wired from the preset, then each type's gains calibrated."""
    net = wire_network(p, rng)
    return _calibrate(net, p, int(rng.integers(2**31)))


def _type_std(net: Network, x: np.ndarray) -> np.ndarray:
    """Mean per-neuron temporal std of each type (K,)."""
    k = len(net.type_names)
    sd = x.std(0)
    return np.bincount(net.neuron_type, sd, k) / np.maximum(
        np.bincount(net.neuron_type, None, k), 1
    )


def _calibrate(net: Network, p: SimPreset, seed: int) -> Network:
    """Set each type's scale from short noise-free and noise-only runs (why: random wiring
    alone gives types from silent to exploding; the search needs every seed on the lab's
    scale (docs/method.md, section 2), with a module whose activity is partly stimulus-driven,
    partly internal).

    Feedforward weights into a type scale its stimulus-driven std toward a per-type target
    (they lie on no cycle, so stability is untouched); the module's shared noise scales its
    internal std. A few passes, since upstream scales move downstream ones."""
    rng = np.random.default_rng(seed)
    k_types = len(net.type_names)
    lo, hi = p.type_std_range  # spread evenly (log), shuffled: types surely differ
    target = rng.permutation(np.exp(np.linspace(np.log(lo), np.log(hi), k_types)))
    target[net.type_role == _RC] = p.module_stim_std
    steps, skip = p.calibration_steps, p.calibration_steps // 5
    stim = StimulusMovie("textures", net, steps, seed).render(0, steps)
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
        net = replace(net, weight=weight, bias=grey_bias(net.rest, net.pre, net.post, weight))
        if rec.any() and net.noise_modes.shape[0]:
            acts, _ = simulate_arrays(
                net, p, "textures", steps, seed, stimulus=grey, measurement_noise=False
            )
            sd = _type_std(net, acts["voltage"][skip:].astype(np.float64))
            g_type = np.where(rec, np.clip(p.module_noise / np.maximum(sd, 1e-6), 1 / 3, 3), 1)
            g = g_type[net.neuron_type]
            net = replace(net, noise=net.noise * g, noise_modes=net.noise_modes * g[None, :])
    return net


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
    fam = StimulusMovie(family, net, n_steps, seed) if stimulus is None else None
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
