"""Task rules as data: which cells train, which form each test task (``manifests/tasks/<source>.yaml``).

A rules file (schema below) names the training pool, the share of it that becomes the IID task, and one
selection rule per OOD task::

    version: 1
    source: hpa
    seed: 0
    iid_test_fraction: 0.285      # share of the train pool that goes to the IID task, stratified by label
    train:
      where: {label: [Nuclear speckles, Mitochondria], cell_type: {not: [HEK 293]}}
    tasks:
      Task_one: {iid: true}
      Task_two: {where: {cell_type: [HEK 293]}}
      Task_three: {where: {label: [Nucleoplasm]}, logo: cell_type}

``where`` is an AND over columns of ``{column: [allowed values]}`` or ``{column: {not: [values]}}``;
values are compared as strings. The IID split is deterministic and independent of row order: within each
label, cells are ranked by ``sha256(seed, cell_id)`` and the first ``round(fraction * n)`` go to the IID
task. A cell outside the training pool takes the first OOD task (in file order) whose rule it matches; a
cell matching nothing gets split ``""`` and is reported as unassigned by the engine, never dropped.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from chammi_data.format.release_format import canonical_json
from chammi_data.format.vocab import TASK_COLUMNS
from chammi_data.store.paths import manifests_dir

RULES_VERSION = 1


class RulesError(ValueError):
    """A task rules file (or override) is malformed; the message names the file and the field."""


def rules_path(source: str) -> Path:
    """``manifests/tasks/<source>.yaml`` in the committed manifests folder."""
    return manifests_dir() / "tasks" / f"{source}.yaml"


def load_rules(source: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The task rules of ``source``, validated.

    ``config["tasks"][source]`` (from a build ``--config``) overrides the committed file: either a path to
    another YAML file or the rules mapping itself.
    """
    override = ((config or {}).get("tasks") or {}).get(source)
    if isinstance(override, Mapping):
        rules, where = copy.deepcopy(dict(override)), f"config tasks.{source}"
    else:
        path = Path(override) if override else rules_path(source)
        if not path.is_file():
            raise FileNotFoundError(f"task rules for source {source!r} not found: {path}")
        with open(path, encoding="utf-8") as fh:
            rules = yaml.safe_load(fh)
        where = str(path)
    validate_rules(rules, where)
    if rules.get("source") not in (None, source):
        raise RulesError(f"{where}: rules are for source {rules.get('source')!r}, not {source!r}")
    return rules


def rules_digest(rules: Mapping[str, Any]) -> str:
    """sha256 of the rules' canonical JSON: recorded in release.json to say which rules made the splits."""
    return hashlib.sha256(canonical_json(dict(rules)).encode()).hexdigest()


def _check_where(where: Any, ctx: str) -> None:
    if not isinstance(where, Mapping) or not where:
        raise RulesError(f"{ctx}: 'where' must be a non-empty mapping of column -> values")
    for col, cond in where.items():
        if isinstance(cond, Mapping):
            if set(cond) != {"not"} or not isinstance(cond["not"], list):
                raise RulesError(
                    f"{ctx}: column {col!r} condition must be a list or {{not: [...]}}, got {cond!r}"
                )
        elif not isinstance(cond, list):
            raise RulesError(
                f"{ctx}: column {col!r} condition must be a list or {{not: [...]}}, got {cond!r}"
            )


def validate_rules(rules: Any, where: str = "rules") -> None:
    """Raise :class:`RulesError` naming ``where`` and the field when ``rules`` breaks the schema."""
    if not isinstance(rules, Mapping):
        raise RulesError(f"{where}: expected a mapping, got {type(rules).__name__}")
    if rules.get("version") != RULES_VERSION:
        raise RulesError(f"{where}: version must be {RULES_VERSION}, got {rules.get('version')!r}")
    frac = rules.get("iid_test_fraction", 0.0)
    if not isinstance(frac, int | float) or not 0.0 <= float(frac) < 1.0:
        raise RulesError(f"{where}: iid_test_fraction must be a number in [0, 1), got {frac!r}")
    if not isinstance(rules.get("seed", 0), int):
        raise RulesError(f"{where}: seed must be an integer")
    train = rules.get("train")
    if not isinstance(train, Mapping) or "where" not in train:
        raise RulesError(f"{where}: 'train' must be a mapping with a 'where' rule")
    _check_where(train["where"], f"{where}: train")
    tasks = rules.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        raise RulesError(f"{where}: 'tasks' must map task names ({', '.join(TASK_COLUMNS)}) to rules")
    iid = [name for name, rule in tasks.items() if isinstance(rule, Mapping) and rule.get("iid")]
    if len(iid) > 1:
        raise RulesError(f"{where}: more than one IID task: {iid}")
    for name, rule in tasks.items():
        if name not in TASK_COLUMNS:
            raise RulesError(f"{where}: unknown task {name!r}; valid: {', '.join(TASK_COLUMNS)}")
        if not isinstance(rule, Mapping):
            raise RulesError(f"{where}: task {name} rule must be a mapping")
        if not rule.get("iid"):
            if "where" not in rule:
                raise RulesError(f"{where}: task {name} needs 'where' (or iid: true)")
            _check_where(rule["where"], f"{where}: task {name}")


def match(table: pd.DataFrame, where: Mapping[str, Any], ctx: str = "rule") -> np.ndarray:
    """Boolean mask of the rows of ``table`` that satisfy every column condition of ``where``."""
    mask = np.ones(len(table), dtype=bool)
    for col, cond in where.items():
        if col not in table.columns:
            raise KeyError(
                f"{ctx}: column {col!r} not in the cell table; columns: {sorted(map(str, table.columns))}"
            )
        values = table[col].astype(str).to_numpy()
        if isinstance(cond, Mapping):
            mask &= ~np.isin(values, [str(v) for v in cond["not"]])
        else:
            mask &= np.isin(values, [str(v) for v in cond])
    return mask


def _rank_key(seed: int, cell_id: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{cell_id}".encode()).hexdigest()


def iid_mask(table: pd.DataFrame, pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of the training pool sent to the IID task: per label, the first round(fraction * n) by hash
    rank."""
    out = np.zeros(len(table), dtype=bool)
    if fraction <= 0:
        return out
    idx = np.flatnonzero(pool)
    labels = table["label"].astype(str).to_numpy()
    ids = table["cell_id"].astype(str).to_numpy()
    for label in sorted(set(labels[idx])):
        members = idx[labels[idx] == label]
        # rank by hash, cell_id as tie breaker: independent of row order and of other labels
        order = sorted(members, key=lambda i: (_rank_key(seed, ids[i]), ids[i]))
        n_test = int(round(fraction * len(members)))
        out[order[:n_test]] = True
    return out


def assign_tasks(table: pd.DataFrame, rules: Mapping[str, Any]) -> pd.DataFrame:
    """Split and task membership per cell.

    ``table``: one row per cell with at least ``cell_id`` and ``label`` and every column the rules name.
    Returns a DataFrame in the row order of ``table`` with columns ``cell_id, train_test_split`` and the
    four task booleans. ``train_test_split`` is ``Train``, a task name, or ``""`` (matched no rule).
    """
    validate_rules(rules)
    for col in ("cell_id", "label"):
        if col not in table.columns:
            raise KeyError(f"cell table lacks column {col!r}")
    dup = table["cell_id"][table["cell_id"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate cell_id(s) in the cell table: {sorted(set(dup))[:5]}")
    n = len(table)
    split = np.full(n, "", dtype=object)
    pool = match(table, rules["train"]["where"], "train")
    tasks = rules["tasks"]
    iid_name = next((name for name, r in tasks.items() if r.get("iid")), None)
    frac = float(rules.get("iid_test_fraction", 0.0))
    to_iid = iid_mask(table, pool, frac, int(rules.get("seed", 0))) if iid_name else np.zeros(n, dtype=bool)
    split[pool] = "Train"
    if iid_name:
        split[to_iid] = iid_name
    free = ~pool
    for name, rule in tasks.items():
        if rule.get("iid"):
            continue
        hit = free & match(table, rule["where"], f"task {name}")
        split[hit] = name
        free &= ~hit
    out = pd.DataFrame({"cell_id": table["cell_id"].to_numpy(), "train_test_split": split})
    for col in TASK_COLUMNS:
        out[col] = split == col
    return out


def summarise(assigned: pd.DataFrame) -> dict[str, int]:
    """{split: number of cells}, with ``"(unassigned)"`` for cells that matched no rule."""
    counts = assigned["train_test_split"].replace("", "(unassigned)").value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items())}
