"""A model torch.export cannot capture: Python control flow on a data-dependent value."""

import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # depends on the input's values, not its shape
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    features = 1
    for d in input_shape:
        features *= int(d)
    return Branchy(features, int(num_classes))
