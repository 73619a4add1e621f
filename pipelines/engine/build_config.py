"""The build configuration: defaults, YAML loading and merging, hashes, and each source's options.

A build config is one mapping: ``cells_per_shard`` (cells per tar shard = per zarr shard), ``codec`` (the
image members' codec: zstd (default), lz4 or none; ``chammi-build --codec``), ``tasks``
(``{source: rules file or rules mapping}`` overriding ``manifests/tasks/<source>.yaml``) and one section per
source pipeline, named by its build name, holding that pipeline's options (``SourcePipeline.options`` merges
them over the pipeline's ``DEFAULTS`` and refuses unknown keys). Any other top-level key is an error. The
merged config goes into release.json with its hash, so a release records how it was made.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from chammi_data.format.codec import CODECS, DEFAULT_CODEC
from chammi_data.format.release_format import canonical_json
from chammi_data.format.writer import CELLS_PER_SHARD
from pipelines.sources.base import SourcePipeline
from pipelines.sources.registry import RAW_SOURCES, list_pipelines

#: Build configuration defaults; a ``--config`` YAML is merged over them (nested mappings merge). The raw
#: sources' sections start empty: their defaults are the pipelines' own ``DEFAULTS``.
DEFAULT_CONFIG: dict[str, Any] = {
    "cells_per_shard": CELLS_PER_SHARD,
    "tasks": {},
    **{name: {} for name in RAW_SOURCES},
}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v)
            if isinstance(out.get(k), Mapping) and isinstance(v, Mapping)
            else copy.deepcopy(v)
        )
    return out


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file ``path`` <- ``overrides``; a clear error for a missing or non-mapping file, an
    unknown top-level key or a bad ``cells_per_shard``."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"build config {p} not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"build config {p} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, Mapping):
            raise ValueError(
                f"build config {p}: expected a YAML mapping at the top level, got {type(data).__name__}"
            )
        config = deep_merge(config, data)
    if overrides:
        config = deep_merge(config, overrides)
    valid = sorted({*DEFAULT_CONFIG, *list_pipelines(), "codec"})
    unknown = sorted(str(k) for k in config if k not in valid)
    if unknown:
        raise ValueError(
            f"build config: unknown key(s) {unknown}; valid: {valid} (source options go in their "
            "source's section)"
        )
    if not isinstance(config.get("cells_per_shard"), int) or config["cells_per_shard"] < 1:
        raise ValueError(
            f"build config: cells_per_shard must be a positive integer, got {config.get('cells_per_shard')!r}"
        )
    if config.get("codec", DEFAULT_CODEC) not in CODECS:
        raise ValueError(f"build config: codec must be one of {', '.join(CODECS)}, got {config['codec']!r}")
    if config.get("codec") == DEFAULT_CODEC:  # not recorded: a default build stays byte-identical
        del config["codec"]
    return config


def parse_settings(settings: list[str]) -> dict[str, Any]:
    """``["chammi75.metadata=small", "cells_per_shard=32"]`` -> a nested overrides mapping; each value is
    parsed as YAML (lists, numbers, null). ``ValueError`` for an item without ``=`` or a key."""
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. chammi75.metadata=small")
        *path, last = key.strip().split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(raw) if raw.strip() else None
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(dict(config)).encode()).hexdigest()


def source_options(
    pipelines: Mapping[str, SourcePipeline], config: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``{name: options}``: each pipeline's section of ``config`` parsed once for the whole build."""
    out = {}
    for name, pipeline in pipelines.items():
        section = config.get(name) or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"build config: section {name!r} must be a mapping of options, got {section!r}")
        out[name] = pipeline.options(section)
    return out
