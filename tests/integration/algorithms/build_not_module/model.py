"""build_model returns a plain dict of tensors instead of a torch.nn.Module."""

import torch


def build_model(input_shape: tuple[int, ...], num_classes: int) -> dict[str, torch.Tensor]:
    return {"weight": torch.zeros(num_classes, 64), "bias": torch.zeros(num_classes)}
