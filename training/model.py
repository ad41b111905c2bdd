"""The window classifier: torchvision's ResNet34 with fewer pooling layers, one logit.

As in Yang, Wu & Sun: the stem's max-pool is replaced by a strided convolution
(less translation invariance, because neighbouring windows can have different
labels), the input is one grey channel, and the head is a single logit for
"this window gives a good kernel estimate".  With ImageNet weights (a local
torchvision ResNet34 state dict) the first convolution's RGB filters are summed
into one channel, and only the replaced convolution, layer3, layer4 and the head
are trained, as the paper fine-tunes them.
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

__all__ = ["TRAINABLE_WHEN_PRETRAINED", "build_model", "load_model"]

#: the parameter groups the paper fine-tunes when starting from ImageNet weights
TRAINABLE_WHEN_PRETRAINED = ("maxpool", "layer3", "layer4", "fc")


def build_model(init_weights: str | os.PathLike | None = None) -> nn.Module:
    """ResNet34 window classifier ``(B, 1, S, S) -> (B, 1)`` logits.

    Parameters
    ----------
    init_weights : path of a torchvision ``resnet34`` state dict (ImageNet), or None to train from scratch.
    """
    model = torchvision.models.resnet34(weights=None)
    if init_weights is not None:
        state = torch.load(init_weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{init_weights}: not a torchvision resnet34 state dict "
                f"(missing {len(missing)}, unexpected {len(unexpected)} keys)"
            )
    rgb = model.conv1.weight.data
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.conv1.weight.data = rgb.sum(dim=1, keepdim=True)  # grey = the sum of the colour filters' responses
    model.maxpool = nn.Sequential(
        nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
    )
    model.fc = nn.Linear(model.fc.in_features, 1)
    if init_weights is not None:
        for name, param in model.named_parameters():
            param.requires_grad = name.split(".")[0] in TRAINABLE_WHEN_PRETRAINED
    return model


def load_model(path: str | os.PathLike) -> nn.Module:
    """A trained classifier from an exported ``model.pt`` (state dict, loaded with ``weights_only``)."""
    model = build_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
