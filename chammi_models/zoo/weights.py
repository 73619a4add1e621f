"""Saving and loading trained models: ``model.safetensors`` + ``card.json`` in one folder.

The card says how to rebuild the network (model name, options, backbone, channel vocabulary, number of
classes); ``channels`` are the names the model has weights for and ``vocabulary`` names that vocabulary:
``chammi`` (CHAMMI's 8 names, the default), ``chammi75``, ``all`` or ``custom``. It also carries what a
user of the weights needs to know: the training data (e.g. release and manifest checksum), per-channel
normalisation, input size, scores. Loading rebuilds the model with
``create_model`` from the card and reads the tensors with safetensors: nothing is ever unpickled.

Card and weights are bound to each other: the card records the sha256 of the weights file
(``weights_sha256``) and the weights file's metadata holds a copy of the card's rebuild fields, so an
edited card (e.g. reordered ``channels``) or swapped weights are refused instead of giving wrong features.
"""

from __future__ import annotations

import json
import struct
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from chammi_data.format.release_format import to_jsonable
from chammi_data.format.vocab import CHANNELS, vocabulary_name
from chammi_data.store.paths import file_sha256
from chammi_models.zoo.base import ChannelAdaptiveModel

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "chammi-model-card/1"
#: Card field holding the sha256 (hex) of the whole weights file.
HASH_FIELD = "weights_sha256"
#: Safetensors metadata key holding the card's rebuild fields (canonical JSON).
ARCH_METADATA = "chammi_architecture"
#: The card fields that rebuild the network.
ARCH_KEYS = ("model", "backbone", "options", "channels", "num_classes")
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
    "channel_registry",
)


class WeightsError(ValueError):
    """A weights folder that cannot be used: a malformed card, a malformed weights file, non-finite
    tensors."""


class WeightsMismatchError(WeightsError, RuntimeError):
    """The card and the weights file of a folder do not belong together."""


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
        "options": to_jsonable(cfg["options"]),
        "backbone": cfg["backbone"],
        "channels": list(cfg["channels"]),
        "num_classes": cfg["num_classes"],
        "num_features": int(model.num_features),
        "vocabulary": vocabulary_name(cfg["channels"]),
        "channel_registry": list(CHANNELS),
    }
    if "pretrained" in cfg:
        full["initialised_from"] = cfg["pretrained"]
    for key, value in (card or {}).items():
        if key == HASH_FIELD:
            raise ValueError(f"card field {HASH_FIELD!r} is computed by save_model; do not pass it")
        if key in _MODEL_KEYS and to_jsonable(value) != full[key]:
            raise ValueError(f"card field {key!r}={value!r} contradicts the model ({full[key]!r})")
        full[key] = to_jsonable(value)
    try:
        json.dumps(full)
    except TypeError as err:
        raise TypeError(f"card for {out} is not JSON-serialisable: {err}") from err
    weights = out / WEIGHTS_FILE
    arch = json.dumps({k: full[k] for k in ARCH_KEYS}, sort_keys=True)
    st_save(model, str(weights), metadata={"chammi_model": cfg["name"], ARCH_METADATA: arch})
    full[HASH_FIELD] = file_sha256(weights)
    (out / CARD_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return out


def read_card(directory: str | PathLike[str]) -> dict[str, Any]:
    """The parsed ``card.json`` of a saved model folder, checked for the fields needed to rebuild it."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CARD_FILE} in {directory}: not a folder written by save_model")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(card, dict):
        raise WeightsError(f"{path} must hold a JSON object, got {type(card).__name__}")
    missing = [k for k in ARCH_KEYS if k not in card]
    if missing:
        raise WeightsError(f"{path} lacks field(s) {missing}")
    valid = {
        "model": (isinstance(card["model"], str), "a string"),
        "backbone": (isinstance(card["backbone"], str), "a string"),
        "options": (isinstance(card["options"], dict), "an object"),
        "channels": (
            isinstance(card["channels"], list) and all(isinstance(c, str) for c in card["channels"]),
            "a list of channel names",
        ),
        "num_classes": (type(card["num_classes"]) is int and card["num_classes"] >= 0, "an integer >= 0"),
    }
    for key, (ok, expected) in valid.items():
        if not ok:
            raise WeightsError(f"{path}: field {key!r} must be {expected}, got {card[key]!r}")
    return card


def card_normalisation(card: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]] | str | None:
    """The card's ``normalisation`` as {source: {channel: (mean, std)}}, ``"per_sample"`` (each channel by
    its own mean and std), or None for a card without it.

    Raises :class:`WeightsError` naming the entry when the field is not of that shape or a std is not
    positive.
    """
    table = card.get("normalisation")
    if table is None or table == "per_sample":
        return table
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if not isinstance(table, dict):
        raise WeightsError(
            f"card field normalisation must map source -> channel -> [mean, std], got {table!r}"
        )
    for source, channels in table.items():
        if not isinstance(channels, dict):
            raise WeightsError(
                f"card field normalisation[{source!r}] must map channel -> [mean, std], got {channels!r}"
            )
        for channel, pair in channels.items():
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
            if not ok or not pair[1] > 0:
                raise WeightsError(
                    f"card field normalisation[{source!r}][{channel!r}] must be [mean, std > 0], got {pair!r}"
                )
            out.setdefault(source, {})[channel] = (float(pair[0]), float(pair[1]))
    return out


def load_model(directory: str | PathLike[str], device: str = "cpu") -> ChannelAdaptiveModel:
    """Rebuild a model from ``card.json`` and load ``model.safetensors`` strictly; ``model.card`` = card.

    Before any real model is built, the folder is checked: the card's fields (:func:`read_card`); its
    ``options`` may only be the model's builder options, so run-time options that load files, such as
    ``pretrained``, are refused (the weights file alone defines the model); the card's rebuild fields equal
    the copy in the weights file's metadata; the file's sha256 equals the card's ``weights_sha256``; and the
    tensor names and shapes in the file's header are those of the network the card describes (built on the
    meta device, which allocates nothing, so a card naming a larger backbone costs no memory). After
    loading, every floating-point tensor must be finite.

    Folders saved before card and weights were bound (no ``weights_sha256``, no metadata copy) load with a
    ``UserWarning``; for them only the header's names and shapes are checked.

    Raises ``FileNotFoundError`` for a missing card or weights file, :class:`WeightsMismatchError` when card
    and weights do not belong together and :class:`WeightsError` for anything else unusable; each message
    names the file and the field or tensor.
    """
    from safetensors.torch import load_model as st_load

    from chammi_models.zoo.registry import create_model

    card = read_card(directory)
    card_path, weights = Path(directory) / CARD_FILE, Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
    _check_options(card, card_path)
    shapes, metadata = read_header(weights)
    if not _check_binding(card, card_path, weights, metadata):
        warnings.warn(
            f"{card_path} predates binding cards to weights (no {HASH_FIELD} or no metadata copy): "
            f"only the tensor names and shapes of {weights} are checked",
            UserWarning,
            stacklevel=2,
        )
    _check_shapes(card, card_path, weights, shapes, metadata)
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
        raise WeightsMismatchError(f"{weights} does not match the model its card describes: {err}") from err
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(
                f"{weights}: tensor {name!r} holds non-finite values (NaN or inf); refusing it"
            )
    model.card = card  # type: ignore[assignment]
    return model.to(device).eval()


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({tensor name: shape}, metadata) from a safetensors file's header, without reading any tensor.

    The format: 8 bytes little-endian header length N, then N bytes of JSON {name: {dtype, shape,
    data_offsets}, "__metadata__": {str: str}}, then the tensor bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= size - 8:
            raise WeightsError(f"{path} is not a safetensors file (header length {length}, file size {size})")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise WeightsError(f"{path} is not a safetensors file: its header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path} is not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    try:
        shapes = {name: tuple(int(n) for n in info["shape"]) for name, info in header.items()}
    except (TypeError, KeyError, ValueError) as err:
        raise WeightsError(f"{path} is not a safetensors file: malformed tensor entry ({err})") from err
    return shapes, {str(k): str(v) for k, v in metadata.items()}


def _check_options(card: dict[str, Any], card_path: Path) -> None:
    """Only the model's builder options may rebuild it; run-time ones (``pretrained``: a file) are refused."""
    from chammi_models.zoo.registry import model_options

    try:
        valid = model_options(card["model"])
    except KeyError as err:
        raise WeightsError(f"{card_path}: field 'model': {err.args[0]}") from None
    extra = sorted(set(card["options"]) - set(valid))
    if extra:
        raise WeightsError(
            f"{card_path}: field 'options' holds {extra}, which are not options of model "
            f"{card['model']!r} ({sorted(valid)}); run-time options such as 'pretrained' are "
            f"refused: the weights file alone defines the model"
        )


def _check_binding(card: dict[str, Any], card_path: Path, weights: Path, metadata: dict[str, str]) -> bool:
    """Card fields vs the weights' metadata copy, and the file's hash vs the card's; False for an old
    folder."""
    stored = metadata.get(ARCH_METADATA)
    if stored is not None:
        try:
            arch = json.loads(stored)
        except json.JSONDecodeError:
            raise WeightsError(f"{weights}: metadata {ARCH_METADATA!r} is not JSON") from None
        for key in ARCH_KEYS:
            if card[key] != arch.get(key):
                raise WeightsMismatchError(
                    f"{weights} does not match the model its card describes: field {key!r} of {card_path} is "
                    f"{card[key]!r}, the weights were saved with {arch.get(key)!r}"
                )
    expected = card.get(HASH_FIELD)
    if expected is not None:
        actual = file_sha256(weights)
        if actual != expected:
            raise WeightsMismatchError(
                f"{weights} does not match the model its card describes: its sha256 is {actual}, field "
                f"{HASH_FIELD!r} of {card_path} says {expected}"
            )
    return stored is not None and expected is not None


def _check_shapes(
    card: dict[str, Any],
    card_path: Path,
    weights: Path,
    shapes: dict[str, tuple[int, ...]],
    metadata: dict[str, str],
) -> None:
    """The header's tensor names and shapes against the network the card describes, built on the meta
    device."""
    from chammi_models.zoo.registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(
                card["model"],
                channels=card["channels"],
                num_classes=card["num_classes"],
                backbone=card["backbone"],
                **card["options"],
            )
    except (KeyError, ValueError, TypeError) as err:
        reason = err.args[0] if err.args else err
        raise WeightsError(f"{card_path}: cannot build the model it describes: {reason}") from None
    # safetensors stores a tensor shared under several names once; its metadata maps the others to it
    present = dict(shapes)
    present.update({alias: shapes[kept] for alias, kept in metadata.items() if kept in shapes})
    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(wanted) - set(present))
    unexpected = sorted(set(shapes) - set(wanted))
    differ = [
        (n, present[n], wanted[n]) for n in sorted(set(wanted) & set(present)) if present[n] != wanted[n]
    ]
    if missing or unexpected or differ:
        described = ", ".join(f"{k}={card[k]!r}" for k in ("model", "backbone", "options", "num_classes"))
        raise WeightsMismatchError(
            f"{weights} does not match the model its card describes ({card_path}: {described}, "
            f"{len(card['channels'])} channels): {len(missing)} tensors missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(differ)} of another shape "
            f"(name, file, card) {differ[:3]}"
        )
