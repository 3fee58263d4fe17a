"""The model every red-team package declares: the digits MLP, unchanged.

An attacker does not need an unusual architecture: the attacks below hide data in
the weights of the same 64-128-10 MLP an honest provider ships.
"""

import torch
from torch import nn

INPUT_SCALE = 1.0 / 16.0  # replaced by make_package


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int) -> None:
        super().__init__()
        features = 1
        for d in input_shape:
            features *= d
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * INPUT_SCALE)


HIDDEN = 128  # replaced by make_package


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MLP(tuple(int(d) for d in input_shape), int(num_classes), HIDDEN)
