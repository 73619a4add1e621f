"""HPAv23 ("mini-HPA"): multi-label protein localisation of single cells, an MLP on frozen features.

Scorer contract: ``score(features, table, **options) -> BenchmarkResult`` with ``features`` (N, D) float, one
row per cell, and ``table`` of N rows (row i <-> features[i]) with the columns ``antibody`` (HPA id, e.g.
``HPA039426``), ``locations`` (HPA location names separated by ``|``; empty = ``Negative``), ``plate``,
``position``, ``sample``, ``cell_id`` (identify the cell; carried, not used by the protocol).

Protocol (issue 20): the antibody split comes from the committed lists ``{train,valid,test}_antibodies.txt``
(cells of an antibody in none of them are excluded and counted). Categories: ``challenge`` (the 18 Kaggle
classes + Negative, 19) or ``all`` (the 34 names of ``location_group_mapping.tsv`` less Cleavage furrow,
Midbody ring, Rods & Rings, Microtubule ends, + Negative: 31); a cell with none of the chosen categories is
excluded and counted; a name outside the mapping is an error. MLP D-512-256-C (ReLU, dropout 0.5), sigmoid
focal loss (alpha 0.25, gamma 2; ``torchvision.ops.sigmoid_focal_loss``), AdamW lr 1e-3, batches of 8192,
ReduceLROnPlateau on the validation macro-AP (patience 4, factor 0.5), up to ``epochs`` (200) with early
stop after ``patience`` (20) epochs without improvement, best-validation weights kept; on the CPU. Run once
per seed in ``seeds`` (0, 1); test metrics averaged over seeds: per-class AP and AUC (classes with both
labels in the test set), macro-AP, micro-AP (headline), macro AUC, label-ranking AP, coverage error.
Seeds fix the initialisation, dropout and batch order: a rerun gives identical numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    average_precision_score,
    coverage_error,
    label_ranking_average_precision_score,
    roc_auc_score,
)
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from chammi_data.evaluation.benchmarks.base import (
    BenchmarkInputError,
    BenchmarkResult,
    check_features,
    library_versions,
    reference_table,
    require_columns,
    table_record,
    text_column,
)

NAME = "hpav23"
COLUMNS = ("antibody", "locations", "plate", "position", "sample", "cell_id")
SPLITS = ("train", "valid", "test")
NEGATIVE = "Negative"
CHALLENGE = (
    "Actin filaments",
    "Aggresome",
    "Centrosome",
    "Cytosol",
    "Endoplasmic reticulum",
    "Golgi apparatus",
    "Intermediate filaments",
    "Microtubules",
    "Mitochondria",
    "Mitotic spindle",
    "Nuclear bodies",
    "Nuclear membrane",
    "Nuclear speckles",
    "Nucleoli",
    "Nucleoli fibrillar center",
    "Nucleoplasm",
    "Plasma membrane",
    "Vesicles",
    NEGATIVE,
)
EXCLUDED_FROM_ALL = ("Cleavage furrow", "Midbody ring", "Rods & Rings", "Microtubule ends")


def known_locations() -> list[str]:
    """HPA location names of ``location_group_mapping.tsv`` (column ``Original annotation``) + Negative."""
    names = pd.read_csv(reference_table(NAME, "location_group_mapping.tsv"), sep="\t")["Original annotation"]
    return [*names.dropna().astype(str), NEGATIVE]


def category_names(which: str) -> list[str]:
    """The category list of ``challenge`` (19) or ``all`` (31)."""
    if which == "challenge":
        return list(CHALLENGE)
    if which == "all":
        return [c for c in known_locations() if c not in EXCLUDED_FROM_ALL]
    raise BenchmarkInputError(f"{NAME}: unknown categories {which!r}; valid: challenge, all")


def antibody_split() -> dict[str, str]:
    """{antibody: train|valid|test} from the committed lists."""
    out: dict[str, str] = {}
    for split in SPLITS:
        for line in reference_table(NAME, f"{split}_antibodies.txt").read_text().split():
            out[line.strip()] = split
    return out


def score(
    features: Any,
    table: pd.DataFrame,
    *,
    categories: str = "challenge",
    seeds: Sequence[int] = (0, 1),
    epochs: int = 200,
    patience: int = 20,
    batch_size: int = 8192,
    lr: float = 1e-3,
    hidden: Sequence[int] = (512, 256),
    dropout: float = 0.5,
) -> BenchmarkResult:
    """Multi-label MLP on the antibody split (see the module docstring)."""
    cats = category_names(categories)
    x = check_features(features, table, NAME)
    require_columns(table, [c for c in COLUMNS if c != "locations"], NAME)
    if "locations" not in table.columns:
        raise BenchmarkInputError(f"{NAME}: table lacks column locations; required: {', '.join(COLUMNS)}")
    y, no_label = _labels(table["locations"], cats)
    split_of = antibody_split()
    split = np.array([split_of.get(a, "") for a in text_column(table, "antibody")])
    use = (split != "") & ~no_label
    for s in SPLITS:
        if not (use & (split == s)).any():
            raise BenchmarkInputError(
                f"{NAME}: no cell of a {s} antibody (from {s}_antibodies.txt) with a label"
            )
    parts = {
        s: (torch.from_numpy(x[use & (split == s)].astype(np.float32)), y[use & (split == s)]) for s in SPLITS
    }
    runs = []
    for seed in seeds:
        model, best_epoch = _train(parts, len(cats), seed, epochs, patience, batch_size, lr, hidden, dropout)
        with torch.no_grad():
            prob = torch.sigmoid(model(parts["test"][0])).numpy()
        runs.append((_metrics(parts["test"][1], prob, cats), best_epoch))
    per_class = pd.concat([r[0][1].assign(seed=s) for r, s in zip(runs, seeds, strict=True)])
    per_class = (
        per_class.groupby("category", sort=False)
        .agg(ap=("ap", "mean"), auc=("auc", "mean"), positives=("positives", "first"))
        .reset_index()
    )
    metrics = {k: float(np.mean([r[0][0][k] for r in runs])) for k in runs[0][0][0]}
    for r, seed in zip(runs, seeds, strict=True):
        metrics.update({f"{k}_seed{seed}": v for k, v in r[0][0].items()})
    return BenchmarkResult(
        benchmark=NAME,
        headline="micro_ap",
        metrics=metrics,
        groups={"classes": per_class},
        options=dict(
            categories=categories,
            seeds=list(seeds),
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            hidden=list(hidden),
            dropout=dropout,
            loss="sigmoid focal (alpha 0.25, gamma 2)",
        ),
        n={
            "rows": len(table),
            "rows_unlisted_antibody": int((split == "").sum()),
            "rows_without_category": int(no_label.sum()),
            **{s: int(len(parts[s][1])) for s in SPLITS},
            **{f"best_epoch_seed{s}": r[1] for r, s in zip(runs, seeds, strict=True)},
        },
        versions=library_versions(),
        provenance={
            "reference_tables": [table_record(reference_table(NAME, f"{s}_antibodies.txt")) for s in SPLITS]
            + [table_record(reference_table(NAME, "location_group_mapping.tsv"))]
        },
        plot=("classes", "category", "ap"),
    )


def _labels(locations: pd.Series, cats: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) float32 multi-hot and (N,) bool "no category of the set"; unknown names are an error."""
    known = set(known_locations())
    index = {c: k for k, c in enumerate(cats)}
    y = np.zeros((len(locations), len(cats)), dtype=np.float32)
    for i, value in enumerate(locations.tolist()):
        names = [n.strip() for n in str(value).split("|") if n.strip()] if isinstance(value, str) else []
        for n in names or [NEGATIVE]:
            if n not in known:
                raise BenchmarkInputError(f"{NAME}: row {i} has unknown location {n!r} (column locations)")
            if n in index:
                y[i, index[n]] = 1
    return y, y.sum(axis=1) == 0


def _macro_ap(y: np.ndarray, prob: np.ndarray) -> float:
    have = y.sum(axis=0) > 0
    return float(average_precision_score(y[:, have], prob[:, have], average="macro")) if have.any() else 0.0


def _train(
    parts: dict,
    n_out: int,
    seed: int,
    epochs: int,
    patience: int,
    batch_size: int,
    lr: float,
    hidden: Sequence[int],
    dropout: float,
) -> tuple[nn.Module, int]:
    """Train one MLP; returns it with the weights of its best validation macro-AP and that epoch."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr, y_tr = parts["train"][0], torch.from_numpy(parts["train"][1])
    x_va, y_va = parts["valid"]
    layers: list[nn.Module] = []
    width = x_tr.shape[1]
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, n_out))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=4, factor=0.5)
    best, best_state, best_epoch, stale = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(batch_size):
            opt.zero_grad()
            loss = sigmoid_focal_loss(model(x_tr[idx]), y_tr[idx], alpha=0.25, gamma=2.0, reduction="mean")
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = _macro_ap(y_va, torch.sigmoid(model(x_va)).numpy())
        sched.step(val)
        if val >= best:  # ties keep the later epoch, as published
            best, best_state, best_epoch, stale = val, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, best_epoch


def _metrics(y: np.ndarray, prob: np.ndarray, cats: list[str]) -> tuple[dict[str, float], pd.DataFrame]:
    present = y.sum(axis=0) > 0
    rows = []
    for k, c in enumerate(cats):
        both = 0 < y[:, k].sum() < len(y)
        rows.append(
            {
                "category": c,
                "positives": int(y[:, k].sum()),
                "ap": float(average_precision_score(y[:, k], prob[:, k])) if both else float("nan"),
                "auc": float(roc_auc_score(y[:, k], prob[:, k])) if both else float("nan"),
            }
        )
    frame = pd.DataFrame(rows)
    yp, pp = y[:, present], prob[:, present]
    out = {
        "micro_ap": float(average_precision_score(yp, pp, average="micro")),
        "macro_ap": float(frame["ap"].mean()),
        "macro_auc": float(frame["auc"].mean()),
        "label_ranking_ap": float(label_ranking_average_precision_score(yp, pp)),
        "coverage_error": float(coverage_error(yp, pp)),
    }
    return out, frame
