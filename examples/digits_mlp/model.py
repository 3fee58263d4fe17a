"""The digits MLP: the model half of the algorithm-package contract.

`build_model(input_shape, num_classes)` returns a fresh, untrained module. The
platform calls it to load the weights `train.py` writes (their names must match
this module's state_dict) and to export the graph, so it stays plain: no
BatchNorm, no dropout, a dynamic batch dimension, only aten ops.
"""

import torch
from torch import nn

# Digits pixels are 0..16; scaling inside forward lets the exported model take raw x.
INPUT_SCALE = 1.0 / 16.0


class DigitsMLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        features = 1
        for d in input_shape:
            features *= d
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * INPUT_SCALE)


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return DigitsMLP(tuple(int(d) for d in input_shape), int(num_classes))
