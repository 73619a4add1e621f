"""Saving and loading trained models: ``model.safetensors`` + ``card.json`` in one folder.

The card says how to rebuild the network (model name, options, backbone, channel vocabulary, number of
classes) and carries what a user of the weights needs to know: the training data (e.g. release and
manifest checksum), per-channel normalisation, input size, scores. Loading rebuilds the model with
``create_model`` from the card and reads the tensors with safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

from chammi_data.vocab import SOURCES, VOCAB

from .base import ChannelAdaptiveModel
from .config import TrainConfig

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "chammi-model-card/1"
#: Card keys written from the model itself; a user card may not contradict them.
_MODEL_KEYS = (
    "format",
    "model",
    "options",
    "backbone",
    "channels",
    "num_classes",
    "num_features",
    "vocabulary",
)


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively (JSON has no tuples); anything else must already be JSON-able."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def save_model(
    model: ChannelAdaptiveModel, directory: str | PathLike[str], card: dict[str, Any] | None = None
) -> Path:
    """Write ``directory/model.safetensors`` and ``directory/card.json``; return the folder.

    ``card`` adds free fields (``training_data``, ``scores``, ``normalisation``, ``img_size``, ...). The
    model must come from ``create_model`` (it needs ``model.model_config``).
    """
    from safetensors.torch import save_model as st_save

    cfg = getattr(model, "model_config", None)
    if not cfg or "name" not in cfg:
        raise ValueError(
            "save_model needs a model built by chammi_models.create_model (no model_config found)"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    full = {
        "format": CARD_FORMAT,
        "model": cfg["name"],
        "options": _jsonable(cfg["options"]),
        "backbone": cfg["backbone"],
        "channels": list(cfg["channels"]),
        "num_classes": cfg["num_classes"],
        "num_features": int(model.num_features),
        "vocabulary": list(VOCAB),
    }
    if "pretrained" in cfg:
        full["initialised_from"] = cfg["pretrained"]
    for key, value in (card or {}).items():
        if key in _MODEL_KEYS and _jsonable(value) != full[key]:
            raise ValueError(f"card field {key!r}={value!r} contradicts the model ({full[key]!r})")
        full[key] = _jsonable(value)
    try:
        text = json.dumps(full, indent=2, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"card for {out} is not JSON-serialisable: {err}") from err
    st_save(model, str(out / WEIGHTS_FILE), metadata={"chammi_model": cfg["name"]})
    (out / CARD_FILE).write_text(text + "\n")
    return out


def training_card(config: TrainConfig, *, classes: dict[str, list[str]], release: dict[str, Any],
                  scores: dict[str, Any] | None, step: int, swad: Any = None) -> dict[str, Any]:
    """The card fields of a training run's final weights, for :func:`save_model` to add to the model's own.

    Records the run (name, config, steps, SWAD averaging), the data it saw (``release``: the release identity
    from ``chammi_models.embed.release_identity``, plus the training sources), the class list of every
    source (``classes``: {source: sorted labels}, the proxy order), what an input needs (``img_size`` and
    ``normalisation``: {source: {channel: [mean, std]}} on the [0, 1] scale) and the final ``scores``.
    """
    d = config.data
    return {
        "run_name": config.name,
        "img_size": d.image_size,
        "normalisation": {src: SOURCES[src].stats() for src in SOURCES},
        "class_lists": classes,
        "training_data": {**release, "train_sources": list(d.train_sources)},
        "config": config.to_dict(),
        "steps": step,
        "swad": None if swad is None else {"start_step": swad.start_step, "averaged_steps": swad.count},
        "scores": None if scores is None else {"cps": scores["cps"], "metric": scores["metric"],
                                               "table": scores["table"]},
    }


def read_card(directory: str | PathLike[str]) -> dict[str, Any]:
    """The parsed ``card.json`` of a saved model folder, checked for the fields needed to rebuild it."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {directory}: not a folder written by save_model")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    missing = [k for k in ("model", "options", "backbone", "channels", "num_classes") if k not in card]
    if missing:
        raise ValueError(f"{path} lacks field(s) {missing}")
    return card


def card_normalisation(card: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]] | None:
    """The card's ``normalisation`` as {source: {channel: (mean, std)}}, or None for a card without it.

    Raises ``ValueError`` naming the entry when the field is not of that shape or a std is not positive.
    """
    table = card.get("normalisation")
    if table is None:
        return None
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if not isinstance(table, dict):
        raise ValueError(f"card field normalisation must map source -> channel -> [mean, std], got {table!r}")
    for source, channels in table.items():
        if not isinstance(channels, dict):
            raise ValueError(f"card field normalisation[{source!r}] must map channel -> [mean, std], got {channels!r}")
        for channel, pair in channels.items():
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
            if not ok or not pair[1] > 0:
                raise ValueError(f"card field normalisation[{source!r}][{channel!r}] must be [mean, std > 0], "
                                 f"got {pair!r}")
            out.setdefault(source, {})[channel] = (float(pair[0]), float(pair[1]))
    return out


def load_model(directory: str | PathLike[str], device: str = "cpu") -> ChannelAdaptiveModel:
    """Rebuild a model from ``card.json`` and load ``model.safetensors`` strictly; ``model.card`` = card."""
    from safetensors.torch import load_model as st_load

    from .registry import create_model

    card = read_card(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
    model = create_model(
        card["model"],
        channels=card["channels"],
        num_classes=card["num_classes"],
        backbone=card["backbone"],
        **card["options"],
    )
    try:
        st_load(model, str(weights), strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"{weights} does not match the model its card describes: {err}") from err
    model.card = card
    return model.to(device).eval()
