"""CHAMMI data library: the cell schema, release storage, loading, streaming and evaluation.

``chammi_data`` imports neither ``pipelines`` nor ``chammi_models``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chammi_data.format.schema import SCHEMA_VERSION, Cell, make_cell_id
from chammi_data.format.vocab import SOURCES, VOCAB, source_info

if TYPE_CHECKING:  # the real objects for type checkers; at run time they are imported on first use
    from chammi_data.evaluation.scoring import evaluate
    from chammi_data.loading.dataset import load
    from chammi_data.loading.streaming import stream

__version__ = "0.1.0"

# Heavier entry points are imported on first use so that `import chammi_data` stays cheap.
_LAZY = {
    "load": "chammi_data.loading.dataset",
    "stream": "chammi_data.loading.streaming",
    "evaluate": "chammi_data.evaluation.scoring",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'chammi_data' has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION",
    "SOURCES",
    "VOCAB",
    "Cell",
    "make_cell_id",
    "source_info",
    "load",
    "stream",
    "evaluate",
]
