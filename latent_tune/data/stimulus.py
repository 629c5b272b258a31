"""Stimulus movies of the demo simulator: moving textures for training; drifting gratings and
moving edges, and flashes and flicker noise, for cross-validation.

Why rendered window by window: a suite streams its datasets in chunks, and each movie's segment
schedule and segment parameters depend only on the seed, so the chunks concatenate to the same
movie whatever the chunk size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latent_tune.data.network import Network

__all__ = ["FAMILIES", "StimulusMovie", "render_stimulus"]

# Stimulus families: the training family and the cross-validation families.
FAMILIES = ("textures", "gratings", "flashes")


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


class StimulusMovie:
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
    return StimulusMovie(family, net, n_steps, seed).render(0, n_steps)
