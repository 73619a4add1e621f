"""CHAMMI model zoo, losses, training and embedding. Models take channel identity by name."""

from __future__ import annotations

_LAZY = {"create_model": "chammi_models.zoo.registry", "list_models": "chammi_models.zoo.registry"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chammi_models' has no attribute {name!r}")


__all__ = ["create_model", "list_models"]
