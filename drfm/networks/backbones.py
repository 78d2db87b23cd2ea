"""Convolutional feature extractors in front of the MLP head (the seed paper's ResNet-18 / VGG-11 + MLP variant).

The network trained end to end is ``head(backbone(rows as images))``; the analysis (collapse stages, network AGOP,
NFA) sees only the head: a Sequential of Linear layers and activations whose inputs are the backbone's features, as
the paper analyses the MLP head's layers.

Named backbones come from torchvision (``resnet18``, ``vgg11``; random initialisation, no downloaded weights),
adapted to the images: the first convolution takes the images' channel count, the classifier is removed and the
last feature maps are averaged to one 512-vector (ResNet-18's own pooling; for VGG-11 a global average pool instead
of its 7 x 7 pool and 25 088-wide classifier input). VGG-11 halves the image five times, so images smaller than
32 x 32 are zero-padded to 32 (MNIST: 28 -> 32, the usual practice). Any other ``torch.nn.Module`` mapping
``(n, C, H, W)`` to ``(n, p)`` can be given instead.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BACKBONES", "build_backbone", "backbone_features", "check_image_shape"]

#: the named backbones (torchvision constructors)
BACKBONES = ("resnet18", "vgg11")
#: VGG-11's smallest input side (five 2 x 2 poolings)
VGG_MIN_SIDE = 32


def _torchvision_models(owner: str, name: str):
    try:
        from torchvision import models
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"The 'backbone' parameter of {owner} is {name!r}, which needs torchvision, and it is not installed. "
            f"Install the torchvision release built for your torch {torch.__version__.split('+')[0]} "
            "(pip install torchvision; see pytorch.org for the matching pair), or pass a torch.nn.Module of your own "
            "as the backbone.") from exc
    except Exception as exc:  # installed, but built for another torch (e.g. "operator torchvision::nms does not exist")
        raise ImportError(
            f"The 'backbone' parameter of {owner} is {name!r}, which needs torchvision; it is installed but failed to "
            f"import ({type(exc).__name__}: {exc}). Its build probably does not match torch {torch.__version__}: "
            "install the torchvision release made for this torch, or pass a torch.nn.Module as the backbone.") from exc
    return models


class _PadTo(nn.Module):
    """Zero-pad images (equally on both sides) up to ``side`` x ``side``."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x):
        dh, dw = max(0, self.side - x.shape[-2]), max(0, self.side - x.shape[-1])
        return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)) if dh or dw else x


def check_image_shape(image_shape, n_features: int, owner: str) -> tuple[int, int, int]:
    """``image_shape`` as (C, H, W) ints whose product is the number of features; ValueError/TypeError otherwise."""
    if image_shape is None:
        raise ValueError(f"The 'image_shape' parameter of {owner} must be given with a backbone: the (channels, "
                         f"height, width) of the images each row holds (MNIST: (1, 28, 28)).")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                  for v in shape):
        raise TypeError(f"The 'image_shape' parameter of {owner} must be three positive ints (C, H, W), got "
                        f"{image_shape!r}")
    if int(np.prod(shape)) != n_features:
        raise ValueError(f"The 'image_shape' parameter of {owner} is {shape}, which holds {int(np.prod(shape))} "
                         f"values, but the rows have {n_features} features")
    return tuple(int(v) for v in shape)


def build_backbone(spec, image_shape, generator: torch.Generator, owner: str) -> tuple[nn.Module, int]:
    """(backbone module on the CPU in float32, its output width). Named backbones are initialised inside a fork of
    torch's global RNG seeded from ``generator`` (torchvision's initialisers draw from the global RNG): reproducible
    under ``random_state`` without touching the caller's RNG. A given module is deep-copied."""
    C, H, W = image_shape
    if isinstance(spec, nn.Module):
        net = copy.deepcopy(spec).cpu().float()
    else:
        models = _torchvision_models(owner, spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            if spec == "resnet18":
                net = models.resnet18(weights=None)
                if C != 3:
                    net.conv1 = nn.Conv2d(C, 64, kernel_size=7, stride=2, padding=3, bias=False)
                net.fc = nn.Identity()
            else:  # vgg11
                vgg = models.vgg11(weights=None)
                if C != 3:
                    vgg.features[0] = nn.Conv2d(C, 64, kernel_size=3, padding=1)
                net = nn.Sequential(_PadTo(VGG_MIN_SIDE), vgg.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    try:
        was = net.training
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(2, C, H, W))
        net.train(was)
    except Exception as exc:  # a user module that does not take these images
        raise ValueError(f"The 'backbone' parameter of {owner}: the module failed on a batch of images of shape "
                         f"{(2, C, H, W)} ({type(exc).__name__}: {exc})") from exc
    if out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(f"The 'backbone' parameter of {owner} must map (n, C, H, W) images to (n, p) features; it "
                         f"returned shape {tuple(out.shape)} for {(2, C, H, W)}")
    return net, int(out.shape[1])


class WithBackbone(nn.Module):
    """``head(backbone(x viewed as images))``: the network trained end to end."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential, image_shape):
        super().__init__()
        self.backbone, self.head, self.image_shape = backbone, head, tuple(image_shape)

    def forward(self, x):
        return self.head(self.backbone(x.reshape(x.shape[0], *self.image_shape)))


@torch.no_grad()
def backbone_features(backbone: nn.Module, image_shape, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """The backbone's features of rows ``x`` (evaluation mode, in batches), in ``x``'s dtype and device."""
    was = backbone.training
    backbone.eval()
    try:
        return torch.cat([backbone(x[s: s + batch_size].reshape(-1, *image_shape))
                          for s in range(0, x.shape[0], batch_size)])
    finally:
        backbone.train(was)
