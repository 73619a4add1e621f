"""Pretrained initialisation from a LOCAL timm ConvNeXt checkpoint. Nothing here ever downloads.

``pretrained`` (the ``create_model`` argument) may be
    * a file: ``.safetensors`` (read with safetensors) or ``.pth`` / ``.pt`` / ``.bin`` (read with
      ``torch.load(weights_only=True)``, so no pickled code runs); timm keys (``stem.0.weight``, ...) or the
      original facebookresearch keys (``downsample_layers.0.0.weight``, ..., converted with timm's filter);
    * a folder: a Hugging Face hub cache folder (``models--timm--convnext_tiny.fb_in22k``), one of its
      snapshot folders, or any folder holding ``model.safetensors`` / ``pytorch_model.bin``;
    * a timm weight name such as ``convnext_tiny.fb_in22k``: looked up in the local Hugging Face cache only
      (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), i.e. HF_HUB_OFFLINE
      semantics; a clear ``FileNotFoundError`` says where it looked and how to place the file.

First-layer rules (each model's ``init_from_timm``; the trunk = stem norm + stages is always copied):
    channel_replication  the RGB stem as is.
    fixed_channels,      RGB filters for the first 3 inputs, extra inputs filled with means of neighbouring
    target_param         RGB filters (1 extra: mean(R,G,B); 2 extra: mean(R,G), mean(G,B)); stem bias kept.
    slice_param          every name's slice = the RGB-mean filter; per-source offsets zero.
    hypernet             the generator's output bias = the RGB-mean filter and its output weights rescaled
                         so each name's generated filter starts 0.1 x the filter's std away from it.
    template_mixing,     first layer random (the paper re-initialises these first layers).
    depthwise
    channel_vit          not a ConvNeXt: ``NotImplementedError``.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

import torch

from chammi_models.zoo.base import ChannelAdaptiveModel
from chammi_models.zoo.trunk import make_timm_convnext

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def hub_cache_dirs() -> list[Path]:
    """Local Hugging Face hub cache folders, in lookup order (env vars first)."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _weights_in_folder(folder: Path) -> Path | None:
    """The weight file inside a snapshot folder or a ``models--org--name`` hub cache folder."""
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    snapshots = folder / "snapshots"
    if snapshots.is_dir():
        ref = folder / "refs" / "main"
        order = [snapshots / ref.read_text().strip()] if ref.is_file() else []
        order += sorted(p for p in snapshots.iterdir() if p.is_dir())
        for snap in order:
            found = _weights_in_folder(snap) if snap.is_dir() else None
            if found:
                return found
    return None


def resolve_checkpoint(pretrained: str | PathLike[str]) -> Path:
    """A local checkpoint file for ``pretrained`` (path or timm weight name); see the module docstring."""
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = _weights_in_folder(path)
        if found is None:
            raise FileNotFoundError(f"no {' / '.join(_WEIGHT_FILES)} in folder {path} (or its snapshots/)")
        return found
    text = str(pretrained)
    if os.sep in text or text.endswith(_SUFFIXES):
        raise FileNotFoundError(f"pretrained checkpoint {text} does not exist")
    name = text if "/" in text else f"timm/{text}"
    folder_name = "models--" + name.replace("/", "--")
    for cache in hub_cache_dirs():
        if (cache / folder_name).is_dir():
            found = _weights_in_folder(cache / folder_name)
            if found:
                return found
    searched = ", ".join(str(c / folder_name) for c in hub_cache_dirs())
    raise FileNotFoundError(
        f"pretrained weights {text!r} are not in the local Hugging Face cache (looked in {searched}); "
        "nothing is downloaded. On a machine with internet access run "
        f"`python -c \"import timm; timm.create_model('{text}', pretrained=True)\"` and copy the folder "
        f"{folder_name} into one of those caches, or pass the path of a .safetensors/.pth file"
    )


def read_state_dict(path: str | PathLike[str], backbone: str = "convnext_tiny") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file with timm ConvNeXt keys (never unpickles code).

    Unwraps ``state_dict`` / ``model`` containers and ``module.`` prefixes, and converts original
    facebookresearch ConvNeXt keys with timm's ``checkpoint_filter_fn`` for ``backbone``.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses pickled objects: say so with the file name
            raise ValueError(f"cannot read {path} as a tensor-only checkpoint: {err}") from err
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "stem.0.weight" not in state and "downsample_layers.0.0.weight" in state:
        from timm.models.convnext import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, make_timm_convnext(backbone))
    if "stem.0.weight" not in state:
        raise KeyError(
            f"{path} is not a ConvNeXt checkpoint: no 'stem.0.weight' (keys: {list(state)[:5]}...)"
        )
    return state


def load_pretrained(model: ChannelAdaptiveModel, pretrained: str | PathLike[str]) -> ChannelAdaptiveModel:
    """Initialise ``model`` in place from a local ConvNeXt checkpoint with its first-layer rule."""
    text = str(pretrained)
    backbone = model.model_config.get("backbone", "convnext_tiny")
    arch = text.split(".")[0]
    if (
        not Path(text).expanduser().exists()
        and "/" not in text
        and arch.startswith("convnext")
        and arch != backbone
    ):
        raise ValueError(
            f"pretrained weights {text!r} are for {arch}, but the model's backbone is {backbone!r}"
        )
    path = resolve_checkpoint(pretrained)
    state = read_state_dict(path, backbone)
    try:
        model.init_from_timm(state)
    except (KeyError, ValueError) as err:
        # KeyError's str() adds quotes: use the message itself
        raise ValueError(f"{path}: {err.args[0] if err.args else err}") from err
    return model
