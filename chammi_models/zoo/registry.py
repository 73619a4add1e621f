"""The model registry: ``create_model`` / ``list_models``, with registration by decorator (timm style).

A model family registers a builder ``builder(channels, num_classes, backbone, **options) -> model`` under a
short name. ``create_model`` validates the name and options, records the arguments on the model as
``model.model_config`` (saved in weight cards so :func:`chammi_models.zoo.weights.load_model` can rebuild it),
and applies pretrained weights from a LOCAL checkpoint if asked.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

from chammi_data.format.vocab import VOCAB
from chammi_models.zoo.base import ChannelAdaptiveModel

Builder = Callable[..., ChannelAdaptiveModel]
_REGISTRY: dict[str, Builder] = {}
#: Modules whose import registers models; imported on first use to keep ``import chammi_models`` light.
_MODEL_MODULES = ("chammi_models.zoo.strategies", "chammi_models.zoo.channel_vit")
_FIXED_ARGS = {"channels", "num_classes", "backbone"}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder`` under ``name`` (an error if the name is taken by another builder)."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name] is not builder:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        _REGISTRY[name] = builder
        return builder

    return wrap


def _load_registry() -> None:
    for mod in _MODEL_MODULES:
        importlib.import_module(mod)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_registry()
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """{option: default} accepted by ``create_model(name, **options)`` beyond the common arguments: the
    builder's keyword-only parameters, plus those of ``builder.options_from`` (a class whose defaults the
    builder passes on as ``**options``, so they are written once)."""
    builder = _entrypoint(name)
    sources = [builder, *([builder.options_from] if hasattr(builder, "options_from") else [])]
    return {
        k: p.default
        for source in sources
        for k, p in inspect.signature(source).parameters.items()
        if k not in _FIXED_ARGS and p.kind is p.KEYWORD_ONLY
    }


def _entrypoint(name: str) -> Builder:
    _load_registry()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(
    name: str,
    channels: str | Sequence[str | int] = VOCAB,
    num_classes: int | None = None,
    backbone: str = "convnext_tiny",
    pretrained: str | PathLike[str] | None = None,
    **options: Any,
) -> ChannelAdaptiveModel:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        channels: the channel vocabulary the model holds weights for: CHAMMI's 8 names by default (the
            paper's parameter counts are for them), a named vocabulary (``"chammi75"``: CHAMMI-75's 25 types,
            ``"all"``: every registry name) or a list of registry names / indices. Recorded in the weights
            card (``channels``, ``vocabulary``).
        num_classes: number of trainable proxies; None = the paper's count (14 over the three sources; 0
            for the untrained channel_replication); 0 = no proxies (feature extractor only).
        backbone: any timm ConvNeXt variant (``convnext_tiny`` as in the paper, ``convnext_atto`` for tiny
            CPU runs). Ignored by channel_vit, whose size comes from its options.
        pretrained: None, a local timm ConvNeXt checkpoint (``.safetensors`` / ``.pth`` / ``.bin`` / a hub
            cache folder) or a timm weight name like ``convnext_tiny.fb_in22k`` resolved from the local
            Hugging Face cache only. Never downloads.
        options: model-specific options; see :func:`model_options`.

    Raises ``KeyError`` for an unknown name (listing the valid ones) and ``TypeError`` for an unknown
    option (listing the valid ones).
    """
    builder = _entrypoint(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"model {name!r} has no option(s) {unknown}; valid options: {sorted(valid)}")
    model = builder(channels=channels, num_classes=num_classes, backbone=backbone, **options)
    model.model_config = {
        "name": name,
        "channels": list(model.channels),
        "num_classes": 0 if model.proxy_loss is None else model.proxy_loss.num_classes,
        "backbone": backbone,
        "options": dict(options),
    }
    if pretrained:  # None or "" = random init
        from chammi_models.zoo.pretrained import load_pretrained

        load_pretrained(model, pretrained)
        model.model_config["pretrained"] = str(pretrained)
    return model
