"""build_model raises: the export step must end the job with the provider's error."""

from torch import nn


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    raise RuntimeError("deliberate failure in build_model")
