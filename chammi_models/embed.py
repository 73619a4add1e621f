"""Trained models in and out, and features row-aligned with the manifest.

- :func:`extract_features`: {source: (N_source, D) float32}, row i = the i-th manifest row of that source,
  computed with the paper's evaluation transform (shorter side to ``image_size``, centre crop, normalise).
- :func:`evaluate_model`: extract + ``chammi_data.evaluate`` (used by the training loop's periodic
  evaluation).
- :func:`load_trained`: (model, card) from a run folder or a weights folder (``chammi_models.zoo.weights``).
- :func:`embed`: ``chammi embed``: features of every manifest row in the official per-dataset layout
  ``OUT/<Allen|HPA|CP>/features.npy`` plus ``OUT/embedding.json``, which ``chammi eval --features OUT``
  scores. The input size and normalisation come from the weights card, so features match what the model
  trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from chammi_data.augment.transforms import Compose, Normalize, eval_transform
from chammi_data.evaluation.features import feature_file_digests, save_features
from chammi_data.format.manifest import RELEASE_JSON, read_manifest, source_rows, sources_in
from chammi_data.format.vocab import SOURCES
from chammi_data.loading.collate import collate_homogeneous
from chammi_data.store.storage import ReleaseStore, open_store
from chammi_models.zoo.base import ChannelAdaptiveModel

FEATURES_NAME = "features"  #: OUT/<Folder>/features.npy


def release_identity(release: str | Path | ReleaseStore) -> dict[str, Any]:
    """{release_dir, release_id, manifest_sha256}: the release id is a hash of ``release.json`` (which is
    byte-deterministic for identical content), the manifest hash the one recorded in it."""
    store = open_store(release)
    try:
        raw = store.read_bytes(RELEASE_JSON)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{store.path(RELEASE_JSON)} not found: {store} is not a release folder (build one with "
            f"chammi-build)"
        ) from None
    info = json.loads(raw)
    return {
        "release_dir": store.url,
        "release_id": hashlib.sha256(raw).hexdigest()[:16],
        "manifest_sha256": info.get("manifest_sha256"),
    }


@torch.no_grad()
def extract_features(
    model: nn.Module,
    release: str | Path | ReleaseStore,
    sources: Sequence[str] | None = None,
    *,
    image_size: int = 224,
    batch_size: int = 256,
    workers: int = 0,
    device: str | torch.device | None = None,
    amp: bool = True,
    progress: bool = True,
    transform: Callable[..., Any] | None = None,
) -> dict[str, np.ndarray]:
    """Features of every manifest row of each source: {source key: (N_source, D) float32}.

    ``sources`` defaults to every source of the release. bf16 autocast is used on CUDA when ``amp``.
    ``transform`` defaults to ``eval_transform(image_size)`` (vocabulary normalisation stats).
    """
    import chammi_data
    from chammi_data.progress import progress as progress_bar

    store = open_store(release)
    transform = transform if transform is not None else eval_transform(image_size)
    manifest = read_manifest(store)
    keys = (
        sources_in(manifest) if sources is None else [SOURCES[s].key if s in SOURCES else s for s in sources]
    )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (dev.type == "cuda" and amp) else nullcontext()
    out: dict[str, np.ndarray] = {}
    try:
        for key in keys:
            expected = source_rows(manifest, key)["cell_id"].tolist()
            ds = chammi_data.load("all", root=store, sources=[key], transform=transform)
            if list(ds.rows["cell_id"]) != expected:
                raise ValueError(
                    f"source {key}: dataset rows are not in manifest feature order; cannot align features"
                )
            loader = DataLoader(
                ds,
                batch_size=batch_size,
                shuffle=False,
                num_workers=workers,
                collate_fn=collate_homogeneous,
                pin_memory=dev.type == "cuda",
            )
            parts = []
            for batch in progress_bar(loader, desc=f"embed {key}", disable=not progress, leave=False):
                with autocast:
                    feats = model(batch["image"].to(dev, non_blocking=True), batch["channels"])
                parts.append(feats.float().cpu().numpy())
            out[key] = np.concatenate(parts).astype(np.float32, copy=False)
    finally:
        model.train(was_training)
    return out


def evaluate_model(
    model: nn.Module,
    release: str | Path | ReleaseStore,
    sources: Sequence[str] | None = None,
    *,
    metric: str = "cosine",
    **extract_options: Any,
) -> dict[str, Any]:
    """Embed (:func:`extract_features` with ``extract_options``: image size, batch size, workers, device,
    amp) and score: {"cps", "metric", "table" (records), "flat" ({name: value} for metrics logs)}.

    ``cps`` is None unless all three sources are evaluated (a leave-one-source-out run scores one source).
    """
    import chammi_data

    feats = extract_features(model, release, sources, progress=False, **extract_options)
    result = chammi_data.evaluate(feats, open_store(release), metric=metric, progress=False)
    flat: dict[str, Any] = {"cps": result.cps}
    for row in result.table.itertuples():
        flat[f"{row.dataset}/{row.task}/f1"] = float(row.f1_score_macro)
        flat[f"{row.dataset}/{row.task}/acc"] = float(row.accuracy)
    return {
        "cps": result.cps,
        "metric": metric,
        "table": result.table.to_dict(orient="records"),
        "flat": flat,
    }


def load_trained(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model, card) from a run folder (``RUN_DIR/model``) or a weights folder written by ``save_model``."""
    from chammi_models.zoo.weights import load_model

    path = Path(checkpoint)
    if (path / "model").is_dir():
        path = path / "model"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no trained model at {checkpoint}: expected a run folder with model/ or a weights "
            f"folder (run `chammi train` first; an unfinished run has no model/ yet, resume it)"
        )
    model = load_model(path)
    return model.to(device).eval(), dict(model.card)  # type: ignore[arg-type]


def card_eval_transform(card: dict[str, Any], image_size: int | None = None) -> tuple[Compose, int, str]:
    """(transform, input size, where the stats came from) for the model a weights card describes.

    The size is ``image_size`` if given, else the card's ``img_size``, else 224. Normalisation uses the card's
    per-(source, channel) ``normalisation`` stats; only a card without that field falls back to the
    vocabulary's stats (``chammi_data.format.vocab``), and the third element says which ("card" |
    "vocabulary").
    """
    from chammi_models.zoo.weights import card_normalisation

    size = int(image_size or card.get("img_size") or 224)
    stats = card_normalisation(card)
    resize_crop = eval_transform(size, normalize=False).transforms
    return Compose([*resize_crop, Normalize(stats=stats)]), size, "vocabulary" if stats is None else "card"


def embed(
    checkpoint: str | Path,
    release: str | Path | ReleaseStore,
    out: str | Path,
    *,
    batch_size: int = 256,
    workers: int = 4,
    device: str | None = None,
    image_size: int | None = None,
    channel_translation: str | None = None,
) -> Path:
    """Write features of every manifest row of each source and ``embedding.json``; returns ``out``.

    Layout: ``out/<Allen|HPA|CP>/features.npy`` ((N_source, D) float32, row-aligned with the source's manifest
    rows), the official per-dataset layout that ``chammi eval --features out`` reads. Inputs are resized and
    normalised as the weights card says (:func:`card_eval_transform`; ``image_size`` overrides the card's
    size).

    ``channel_translation`` (``chammi->chammi75`` / ``chammi75->chammi``) opts in to renaming the release's
    channel names into the model's vocabulary (``ChannelAdaptiveModel.translate_inputs``): a model trained on
    CHAMMI-75 embeds CHAMMI's sources, and the reverse. It is recorded in ``embedding.json``.

    Raises ``FileNotFoundError`` for a missing release or model folder (checked in that order, before any
    model is built) and ``chammi_models.zoo.weights.WeightsError`` for an unusable card or weights file.
    """
    store, out = open_store(release), Path(out)
    identity = release_identity(store)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, card = load_trained(checkpoint, dev)
    if isinstance(model, ChannelAdaptiveModel):
        model.translate_inputs(channel_translation)
    transform, size, stats_from = card_eval_transform(card, image_size)
    feats = extract_features(
        model, store, batch_size=batch_size, workers=workers, device=dev, transform=transform
    )
    out.mkdir(parents=True, exist_ok=True)
    paths = save_features(out, feats, FEATURES_NAME)
    rows = {SOURCES[key].folder: int(arr.shape[0]) for key, arr in feats.items()}
    info = {
        "model": getattr(model, "model_config", {}),
        "checkpoint": str(Path(checkpoint).resolve()),
        "run_name": card.get("run_name"),
        **identity,
        "features_name": FEATURES_NAME,
        "rows": rows,
        "dim": int(next(iter(feats.values())).shape[1]) if feats else 0,
        "image_size": size,
        "normalisation": stats_from,
        "channel_translation": channel_translation,
        "files": feature_file_digests(paths),
    }
    (out / "embedding.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return out
