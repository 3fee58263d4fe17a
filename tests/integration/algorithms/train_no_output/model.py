"""A one-layer linear classifier on the digits pixels (0..16): a plain, exportable model."""

import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) / 16.0)


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    features = 1
    for d in input_shape:
        features *= int(d)
    return Linear(features, int(num_classes))
