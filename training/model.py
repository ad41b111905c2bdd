"""The window classifiers: torchvision's ResNet34 with fewer pooling layers, one logit per window.

As in Yang, Wu & Sun: the stem's max-pool is replaced by a strided convolution
(less translation invariance, because neighbouring windows can have different
labels), the input is one grey channel, and the head is a single logit for
"this window gives a good kernel estimate".  With ImageNet weights (a local
torchvision ResNet34 state dict) the first convolution's RGB filters are summed
into one channel, and only the replaced convolution, layer3, layer4 and the head
are trained, as the paper fine-tunes them.

Two architectures share that trunk (:data:`ARCHITECTURES`):

``window``
    the paper's: the network runs on every window ``(B, 1, S, S)`` separately,
    each window standardised on its own; ``(B, 1)`` logits.
``image``
    one pass per image (Fast R-CNN's idea): the trunk (GroupNorm in place of
    BatchNorm, see :func:`_group_norm`) runs once over the whole image, standardised
    as a whole, and each window's logit comes from its box on the last feature map
    (stride 32: the mean of the cells under the box, each weighted by the share of
    the box it covers) through the same linear head.
    Every pixel goes through the trunk once instead of about ``(S / stride)^2``
    times.  (``torchvision.ops.roi_align`` would sample the box bilinearly, reaching
    half a cell beyond it; area pooling is exact and measured as fast on the CPU:
    best of 3, 0.71 s against 0.76 s for the forward and backward pass of a 450 px
    image with its 121 boxes.)
"""

from __future__ import annotations

import os

import torch
import torchvision
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "STRIDE",
    "TRAINABLE_WHEN_PRETRAINED",
    "ImageScorer",
    "build_model",
    "load_model",
]

#: the parameter groups the paper fine-tunes when starting from ImageNet weights
TRAINABLE_WHEN_PRETRAINED = ("maxpool", "layer3", "layer4", "fc")

#: classifier architectures: name -> what ``model.json`` says of it
ARCHITECTURES = {
    "window": "torchvision resnet34, 1 input channel, max-pool replaced by a stride-2 convolution, 1 logit; "
    "one forward pass per window",
    "image": "the same resnet34 trunk (GroupNorm, 32 groups, in place of BatchNorm) once over the whole image; "
    "each window's logit from the area-weighted mean of the stride-32 feature cells under its box and the linear head",
}

#: the trunk's total stride: conv1, the strided stem convolution, layer2, layer3 and layer4 halve the size
STRIDE = 32


def _resnet(init_weights: str | os.PathLike | None) -> nn.Module:
    """torchvision's resnet34 with one grey input channel, a strided stem convolution and one logit."""
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


class ImageScorer(nn.Module):
    """All windows of an image in one pass: ``forward(images (B, 1, H, W), boxes (N, 5)) -> (N,)`` logits.

    ``boxes`` rows are ``(batch index, x0, y0, x1, y1)`` in pixels (a window at
    corner ``(y, x)`` of size ``S`` is ``(b, x, y, x + S, y + S)``).  The parameter
    names are those of the ``window`` architecture, so a state dict (or ImageNet
    weights) loads into either.

    >>> scorer = ImageScorer(_resnet(None)).eval()
    >>> boxes = torch.tensor([[0, 0, 0, 64, 64], [0, 32, 32, 96, 96]], dtype=torch.float32)
    >>> scorer(torch.zeros(1, 1, 96, 96), boxes).shape
    torch.Size([2])
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc"):
            setattr(self, name, getattr(net, name))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk: ``(B, 1, H, W)`` -> ``(B, 512, ceil(H / 32), ceil(W / 32))``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, features: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Each box's logit from a feature map (``features`` of the images that ``boxes`` index).

        The box's feature is the mean of the feature cells under it, each cell weighted by the
        share of the box it covers (cell ``i`` spans pixels ``[32 i, 32 i + 32)``): exact area
        pooling, two small products per image, whose gradient is as cheap as its value.
        """
        rows, cols = features.shape[-2:]
        pooled = features.new_empty((len(boxes), features.shape[1]))
        index = boxes[:, 0].long()
        for b in torch.unique(index).tolist():
            mine = torch.nonzero(index == b).view(-1)
            box = boxes[mine].to(features.dtype)
            wy = _coverage(box[:, 2], box[:, 4], rows)
            wx = _coverage(box[:, 1], box[:, 3], cols)
            pooled[mine] = torch.einsum("ni,cij,nj->nc", wy, features[b], wx)
        return self.fc(pooled).view(-1)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(images), boxes)


def _coverage(start: torch.Tensor, end: torch.Tensor, cells: int) -> torch.Tensor:
    """``(N, cells)``: the share of each span ``[start, end)`` (pixels) that falls in each stride-32 cell."""
    edges = torch.arange(cells + 1, dtype=start.dtype, device=start.device) * STRIDE
    low = torch.maximum(start[:, None], edges[None, :-1])
    high = torch.minimum(end[:, None], edges[None, 1:])
    return (high - low).clamp(min=0) / (end - start).clamp(min=1e-6)[:, None]


def build_model(init_weights: str | os.PathLike | None = None, arch: str = "window") -> nn.Module:
    """A window classifier of architecture ``arch`` (see :data:`ARCHITECTURES`).

    Parameters
    ----------
    init_weights : path of a torchvision ``resnet34`` state dict (ImageNet), or None to train from scratch.

    >>> build_model()(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1])
    >>> type(build_model(arch="image")).__name__
    'ImageScorer'
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; one of {', '.join(ARCHITECTURES)}")
    net = _resnet(init_weights)
    if arch == "image":
        _group_norm(net)
        return ImageScorer(net)
    return net


def _group_norm(module: nn.Module, groups: int = 32) -> None:
    """Every BatchNorm of ``module`` becomes a GroupNorm of ``groups`` groups with its scale and shift.

    The image scorer's step holds one or two images: BatchNorm's statistics over so few made the
    network in training another function than in evaluation (its running statistics), and its
    validation ranking fell below a random window's.  GroupNorm normalises each image on its own,
    the same in both modes, whatever else shares the batch.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            norm = nn.GroupNorm(groups, child.num_features)
            norm.weight.data.copy_(child.weight.data)  # ImageNet's scale and shift carry over
            norm.bias.data.copy_(child.bias.data)
            norm.weight.requires_grad = child.weight.requires_grad
            norm.bias.requires_grad = child.bias.requires_grad
            setattr(module, name, norm)
        else:
            _group_norm(child, groups)


def load_model(path: str | os.PathLike, arch: str = "window") -> nn.Module:
    """A trained classifier from an exported ``model.pt`` (state dict, loaded with ``weights_only``)."""
    model = build_model(arch=arch)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
