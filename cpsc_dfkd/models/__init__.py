"""One registry for every network in the kit: ``create_model(name, num_classes, in_channels)``.

Classifiers share one calling convention: ``model(x)`` returns logits and
``model(x, return_features=True)`` returns ``(logits, penultimate_features)``; the features
are what the contrastive loss and the diagnostics look at, and ``model.classify(features)`` maps them to
the logits (the last, linear layer).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that makes a model constructor available to ``create_model`` under ``name``."""

    def add(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = constructor
        return constructor

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the classifier called ``name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid models are: {', '.join(list_models())}")
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    if in_channels not in (1, 3):
        raise UserError(f"in_channels must be 1 (grey) or 3 (colour), got {in_channels}")
    model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.arch = name
    return model


def feature_dim(model: nn.Module) -> int:
    """Size of the penultimate features a classifier returns with ``return_features=True``."""
    return model.feature_dim


# Importing the families fills the registry.
from . import lenet, resnet, vgg, wresnet  # noqa: E402,F401
from .generator import ConditionalGenerator, GeneratorEnsemble, UnconditionalGenerator, create_generator  # noqa: E402,F401
