"""MLP with input skips, the building block of every EED module (docs/method.md, section 5).

a_0 = x; a_l = act(W_l [a_{l-1}, P_l x + c_l] + b_l); y = W_out [a_Lh, P_f x + c_f] + b_out.
The lab found input skips both more accurate and the only stable evolver architecture.
The Lh + 1 un-activated input projections are stored as one Linear (x is read once, one
matmul); its default init has the same distribution as separate Linear(in, h) layers.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLPWithSkips(nn.Module):
    """MLPWithSkips(in, out, h, Lh); Lh = 0 is a single Linear. No normalisation layers."""

    def __init__(
        self,
        in_dims: int,
        out_dims: int,
        hidden_units: int,
        hidden_layers: int,
        activation: Literal["relu", "tanh"] = "relu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {list(ACTIVATIONS)}"
            )
        if min(in_dims, out_dims, hidden_units) < 1 or hidden_layers < 0:
            raise ValueError("MLPWithSkips needs positive sizes and hidden_layers >= 0")
        self.in_dims, self.out_dims = int(in_dims), int(out_dims)
        self.hidden_units, self.hidden_layers = int(hidden_units), int(hidden_layers)
        h = self.hidden_units
        if self.hidden_layers == 0:
            self.input_projection: nn.Linear | None = None
            self.hidden = nn.ModuleList()
            self.output_layer = nn.Linear(in_dims, out_dims)
        else:
            # rows [l*h, (l+1)*h) are P_{l+1}, c_{l+1}; the last block is P_f, c_f
            self.input_projection = nn.Linear(in_dims, (self.hidden_layers + 1) * h)
            self.hidden = nn.ModuleList(
                nn.Linear((in_dims if layer == 0 else h) + h, h)
                for layer in range(self.hidden_layers)
            )
            self.output_layer = nn.Linear(2 * h, out_dims)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dims) -> (..., out_dims)."""
        return self.output_layer(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The output layer's input [a_Lh, P_f x + c_f] (..., 2h), or x itself when Lh = 0.

        Why separate: the masked staggered loss applies ``output_layer`` only to the rows
        (neurons) that are observed, so it needs the features before that last layer.
        """
        if self.input_projection is None:
            return x
        projections = self.input_projection(x).split(self.hidden_units, dim=-1)
        a = x
        for layer, proj in zip(self.hidden, projections[:-1]):
            a = self.act(layer(torch.cat((a, proj), dim=-1)))
        return torch.cat((a, projections[-1]), dim=-1)

    @staticmethod
    def param_count(in_dims: int, out_dims: int, hidden_units: int, hidden_layers: int) -> int:
        """Parameter count (formula in docs/method.md, section 5) without building the module."""
        d, o, h, n = in_dims, out_dims, hidden_units, hidden_layers
        if n == 0:
            return d * o + o
        return (
            n * (d * h + h)
            + (d + h) * h
            + h
            + (n - 1) * (2 * h * h + h)
            + (d * h + h)
            + (2 * h * o + o)
        )
