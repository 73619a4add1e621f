"""Embed a CHAMMI-75 benchmark's release with any zoo model or weights folder, and run a benchmark end to end.

- :func:`resolve_model`: a run or weights folder (``chammi train`` / ``save_model``), or a zoo model name
  (``chammi_models.list_models()``) built untrained with the options given (seeded).
- :func:`embed_release`: features of every row of the benchmark's source, row-aligned with its scorer table.
  The images come through ``chammi_data``'s release reader (one verified read per image, local or remote),
  then the protocol's crop (JUMP-CP: centre 128), the model's resize (shorter side to the input size, centre
  crop) and normalisation: the card's statistics when it has some for the benchmark's source, else per
  image and channel (each channel by its own mean and std, as the CHAMMI-75 reference loaders do; a card
  holds CHAMMI's per-source statistics only).

  ``bag_of_channels=False`` (default): one embedding per image, all its channels at once (a
  channel-adaptive model; the channel names are the CHAMMI-75 types stored in the release).
  ``bag_of_channels=True``: each channel is embedded alone as a 1-channel image named by its type and the C
  embeddings are concatenated in channel order ((N, C * D), the CHAMMI-75 reference model's recipe), for any
  model that takes those channel names one at a time.
- :func:`run_benchmark`: embed (or read ``features``), score, write ``results.json``/``.csv`` and the plot:
  what ``chammi eval --benchmark NAME`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from chammi_data.augment.transforms import PER_SAMPLE, CenterCrop, Compose, Normalize, ResizeShorter
from chammi_data.evaluation.benchmarks import get_benchmark, write_result
from chammi_data.evaluation.benchmarks.base import BenchmarkResult
from chammi_data.evaluation.benchmarks.features_io import save_benchmark_features
from chammi_data.evaluation.benchmarks.release_table import (
    PROTOCOL_CROP,
    benchmark_source,
    release_identity,
    release_rows,
)
from chammi_data.evaluation.benchmarks.suite import score_features
from chammi_data.loading.dataset import ReleaseDataset
from chammi_data.store.storage import open_store


class PerImageNormalize:
    """(x - mean) / (std + eps) per channel of each image (CHAMMI-75's ``PerImageNormalize``)."""

    def __init__(self, eps: float = 1e-7) -> None:
        self.eps = eps

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        img = sample["image"]
        flat = img.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1)
        std = flat.std(dim=1).view(-1, 1, 1) if flat.shape[1] > 1 else torch.zeros_like(mean)
        return {**sample, "image": (img - mean) / (std + self.eps)}

    def __repr__(self) -> str:
        return f"PerImageNormalize(eps={self.eps})"


def benchmark_transform(
    name: str, size: int, stats: Mapping[str, Mapping[str, tuple[float, float]]] | str | None = None
) -> Compose:
    """The evaluation transform of benchmark ``name``: protocol crop, resize, centre crop, normalisation.

    ``stats`` is the weights card's normalisation: a model trained with ``"per_sample"`` normalisation
    (CHAMMI-75) is fed that way; a card table with stats for the benchmark's source uses them; otherwise each
    image is normalised by itself as the CHAMMI-75 benchmarks do (:class:`PerImageNormalize`)."""
    steps: list[Any] = [CenterCrop(PROTOCOL_CROP[name])] if name in PROTOCOL_CROP else []
    steps += [ResizeShorter(size), CenterCrop(size)]
    source = benchmark_source(name)
    if stats == PER_SAMPLE:
        steps.append(Normalize(stats=PER_SAMPLE))
    elif isinstance(stats, Mapping) and source in stats:
        steps.append(Normalize(stats={source: stats[source]}))
    else:
        steps.append(PerImageNormalize())
    return Compose(steps)


def resolve_model(
    checkpoint: str | Path, options: Mapping[str, Any] | None = None, seed: int = 0, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any], str]:
    """(model, card, how it was made) for ``checkpoint``: a run or weights folder, or a zoo model name.

    A zoo model is built untrained (``num_classes=0``, the ``channels`` vocabulary ``all`` unless
    ``options`` says otherwise) with ``torch.manual_seed(seed)``, so the same name, options and seed give the
    same features. Options are only for a zoo name; a folder's model is defined by its card.
    """
    from chammi_models.embed import load_trained
    from chammi_models.zoo.registry import create_model, list_models

    opts = dict(options or {})
    path = Path(checkpoint)
    if path.exists():
        if opts:
            raise ValueError(f"--model-option applies to a zoo model name, not to the folder {path}")
        model, card = load_trained(path, device)
        return model, card, f"weights {path.resolve()}"
    if str(checkpoint) not in list_models():
        raise FileNotFoundError(
            f"--checkpoint {checkpoint}: no such run or weights folder, and not a zoo model "
            f"({', '.join(list_models())})"
        )
    opts.setdefault("channels", "all")
    opts.setdefault("num_classes", 0)
    torch.manual_seed(seed)
    model = create_model(str(checkpoint), **opts).to(device).eval()
    card = {"img_size": opts.get("img_size"), "model": model.model_config}
    return model, card, f"untrained zoo model {checkpoint} (seed {seed})"


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _check_channels(model: nn.Module, channel_sets: Sequence[str], bag_of_channels: bool) -> None:
    """Fail before the first image when the model cannot take the release's channel names (as the model's
    own check would at the first batch: unknown names, an unseen channel set)."""
    check = getattr(model, "channel_names", None)
    if check is None:
        return
    for text in channel_sets:
        names = tuple(str(text).split(","))
        for group in [(n,) for n in names] if bag_of_channels else [names]:
            check(torch.zeros(1, len(group), 1, 1), group)


@torch.no_grad()
def embed_release(
    model: nn.Module,
    release: Any,
    name: str,
    *,
    bag_of_channels: bool = False,
    image_size: int = 224,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device | None = None,
    stats: Mapping[str, Mapping[str, tuple[float, float]]] | str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, list[str], tuple[str, ...]]:
    """(features (N, D) float32, cell ids, channel names) of every row of benchmark ``name``'s source.

    Row i is row i of ``release_rows(release, name)``. The channel names are those of the first image (a
    release whose images differ in channel count cannot be concatenated under bag-of-channels: an error).
    """
    from chammi_data.progress import progress as progress_bar

    store = open_store(release)
    rows = release_rows(store, name)
    _check_channels(model, rows["channels"].unique(), bag_of_channels)
    ds = ReleaseDataset(store, rows, transform=benchmark_transform(name, image_size, stats))
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_as_list)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    first: tuple[str, ...] | None = None
    try:
        for batch in progress_bar(loader, desc=f"embed {name}", disable=not progress, leave=False):
            out: list[np.ndarray | None] = [None] * len(batch)
            groups: dict[tuple[str, ...], list[int]] = {}
            for i, s in enumerate(batch):
                groups.setdefault(tuple(s["channels"]), []).append(i)
            for names, idx in groups.items():
                first = first or names
                if bag_of_channels and len(names) != len(first):
                    raise ValueError(
                        f"{name}: bag-of-channels needs one channel count; images have {first} and {names}"
                    )
                images = torch.stack([batch[i]["image"] for i in idx]).to(dev)
                with autocast:
                    feats = (
                        torch.cat([model(images[:, k : k + 1], (c,)) for k, c in enumerate(names)], dim=1)
                        if bag_of_channels
                        else model(images, names)
                    )
                for i, f in zip(idx, feats.float().cpu().numpy(), strict=True):
                    out[i] = f
            parts.append(np.stack(out))  # type: ignore[arg-type]
    finally:
        model.train(was_training)
    return np.concatenate(parts).astype(np.float32), rows["cell_id"].astype(str).tolist(), first or ()


def embed_benchmark(
    checkpoint: str | Path,
    release: Any,
    name: str,
    out: str | Path,
    *,
    bag_of_channels: bool = False,
    model_options: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | None = None,
    seed: int = 0,
    channel_translation: str | None = None,
    progress: bool = True,
) -> Path:
    """Embed benchmark ``name``'s release with ``checkpoint`` and write the features folder
    (``chammi_data.evaluation.benchmarks.features_io``); returns ``out``."""
    from chammi_models.zoo.weights import card_normalisation

    store = open_store(release)
    identity = release_identity(store)  # a missing release fails before a model is built
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, card, made = resolve_model(checkpoint, model_options, seed, dev)
    if channel_translation is not None:
        model.translate_inputs(channel_translation)  # type: ignore[operator]
    size = int(image_size or card.get("img_size") or 224)
    stats = card_normalisation(card) if "normalisation" in card else None
    feats, ids, channels = embed_release(
        model,
        store,
        name,
        bag_of_channels=bag_of_channels,
        image_size=size,
        batch_size=batch_size,
        workers=workers,
        device=dev,
        stats=stats,
        progress=progress,
    )
    info = {
        "benchmark": get_benchmark(name).name,
        "source": benchmark_source(name),
        **identity,
        "model": made,
        "model_config": getattr(model, "model_config", {}),
        "bag_of_channels": bag_of_channels,
        "channels": list(channels),
        "image_size": size,
        "normalisation": "per_sample"
        if stats == PER_SAMPLE
        else "card"
        if isinstance(stats, Mapping) and benchmark_source(name) in stats
        else "per_image",
        "protocol_crop": list(PROTOCOL_CROP.get(name, ())),
        "channel_translation": channel_translation,
    }
    return save_benchmark_features(out, feats, ids, info)


def run_benchmark(
    name: str,
    release: Any,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    features: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    force: bool = False,
    **embed_options: Any,
) -> tuple[BenchmarkResult, dict[str, Path]]:
    """Score benchmark ``name``: embed with ``checkpoint`` into ``out/features`` first (or read
    ``features``), then score against ``release`` and write ``results.json``, ``results.csv`` and the plot
    into ``out``. Returns the result and the written paths (plus ``features``).

    ``embed_options`` go to :func:`embed_benchmark` (``bag_of_channels``, ``model_options``, ``image_size``,
    ``batch_size``, ``workers``, ``device``, ``seed``, ``channel_translation``, ``progress``); for ``chammi``
    the CHAMMI embedding (``chammi_models.embed.embed``) is used instead.
    """
    bench = get_benchmark(name)
    if (checkpoint is None) == (features is None):
        raise ValueError(f"{bench.name}: give either features (precomputed) or a checkpoint to embed with")
    out = Path(out)
    if checkpoint is not None:
        features = out / "features"
        if bench.name == "chammi":
            _embed_chammi(checkpoint, release, features, embed_options)
        else:
            embed_benchmark(checkpoint, release, bench.name, features, **embed_options)
    elif embed_options.get("bag_of_channels"):
        raise ValueError(
            "--bag-of-channels applies when embedding (--checkpoint), not to precomputed features"
        )
    assert features is not None
    result = score_features(bench.name, features, release, options, force)
    paths = write_result(result, out)
    return result, {**paths, "features": Path(features)}


def _embed_chammi(checkpoint: str | Path, release: Any, out: Path, opts: Mapping[str, Any]) -> None:
    """CHAMMI's own embedding (official per-source layout) for the ``chammi`` benchmark."""
    from chammi_models.embed import embed

    unsupported = sorted(k for k in ("bag_of_channels", "model_options") if opts.get(k))
    if unsupported:
        raise ValueError(
            f"chammi: {', '.join(unsupported)} not supported; embed with a trained weights folder"
        )
    keep = {k: opts[k] for k in ("batch_size", "workers", "device", "image_size") if opts.get(k) is not None}
    embed(checkpoint, release, out, channel_translation=opts.get("channel_translation"), **keep)


__all__: Sequence[str] = (
    "PerImageNormalize",
    "embed_benchmark",
    "embed_release",
    "resolve_model",
    "run_benchmark",
)
