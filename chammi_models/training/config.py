"""Training configurations: YAML files with dotted ``key=value`` overrides, validated against dataclasses.

A config has five sections (``model``, ``data``, ``optim``, ``loss``, ``run``) plus a ``name``. Every key is
declared here with a type and a default, so an unknown key in a YAML file or an override fails at once with
the list of valid keys instead of being silently ignored.

    cfg = load_config("configs/tiny_cpu.yaml", overrides=["optim.lr=3e-3", "data.batch_size=16"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chammi_data.format.vocab import RELEASE_SOURCE_KEYS, SOURCES, vocabulary
from chammi_data.store.paths import configs_dir


@dataclass
class ModelConfig:
    """Which zoo model to build (``chammi_models.create_model`` arguments)."""

    name: str = "depthwise"  #: registered strategy name
    #: channel vocabulary the model has weights for: chammi (CHAMMI's 8 names), chammi75, all, or a list
    vocabulary: str | list[str] = "chammi"
    backbone: str = "convnext_tiny"  #: timm trunk
    pretrained: str | None = None  #: timm weight tag, e.g. convnext_tiny.fb_in22k (must be cached locally)
    options: dict[str, Any] = field(default_factory=dict)  #: extra keyword options for the strategy


@dataclass
class DataConfig:
    """What to stream and how to augment it."""

    train_sources: list[str] = field(default_factory=lambda: list(SOURCES))
    eval_sources: list[str] = field(default_factory=lambda: list(SOURCES))
    image_size: int = 224  #: square training/eval input side, pixels
    scale: list[float] = field(default_factory=lambda: [0.8, 1.0])  #: RandomResizedCrop area range
    ratio: list[float] = field(default_factory=lambda: [0.9, 1.1])  #: RandomResizedCrop aspect range
    hflip: bool = True
    tps_p: float = 0.0  #: probability of the thin-plate-spline warp
    batch_size: int = 128  #: GLOBAL batch (all ranks together); each rank takes batch_size / world_size
    workers: int = 4  #: DataLoader workers per rank (persistent across epochs)
    eval_batch_size: int = 256
    stream_order: str = "auto"  #: exact | shards | auto (exact for a local release, shards for a URL)
    shuffle_buffer: int = 1024  #: samples per worker shuffle buffer in shards order
    readahead: int = 2  #: shard runs each worker keeps in flight in shards order
    cache_dir: str | None = None  #: local cache of whole remote shards (checked against release.json)
    #: CHAMMI-75: cut a guided crop (study-sized, around a random cell) of every whole image in the workers,
    #: resized to image_size (chammi_data.augment.guided_crop)
    guided_crop: bool = False
    crop_table: str | None = None  #: the per-study crop sizes (null: manifests/chammi75_crops.yaml)
    bag_of_channels: bool = False  #: every channel its own 1-channel sample (CHAMMI-75's reference recipe)
    #: source: the per-(source, channel) statistics of vocab; per_sample: each channel by its own mean and std
    normalisation: str = "source"


@dataclass
class OptimConfig:
    """AdamW + per-step cosine schedule with linear warm-up, the paper's recipe
    (``chammi_models.training.schedule``)."""

    lr: float = 1e-3
    weight_decay: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_start_lr: float = 1e-5
    min_lr: float = 1e-6
    epochs: float = 15.0  #: training length in epochs (ignored when max_steps is set)
    warmup_epochs: float = 3.0
    max_steps: int | None = None  #: training length in optimizer steps; overrides epochs
    warmup_steps: int | None = None  #: warm-up length in steps; overrides warmup_epochs
    grad_clip: float | None = 1.0  #: max global grad norm; null disables


@dataclass
class LossConfig:
    """Proxy loss, SimCLR and SWAD options."""

    proxy_temperature: float | None = None  #: proxy-loss temperature; null = the model's own default option
    #: weight of the proxy (label) loss; 0: no proxies (CHAMMI-75 has no labels: train with SimCLR alone)
    proxy_lambda: float = 1.0
    ssl_lambda: float = 0.0  #: weight of the SimCLR loss; 0 disables the second view
    ssl_temperature: float = 0.07
    ssl_projection: bool = True  #: 2-layer MLP projection head before InfoNCE
    ssl_projection_dim: int = 128
    swad_start: int | None = None  #: optimizer step from which weights are densely averaged; null disables


@dataclass
class RunConfig:
    """Seeds, checkpointing, evaluation and device options."""

    seed: int = 0
    checkpoint_every: int = 1000  #: steps between checkpoints (one is always written at the end)
    eval_every: int | None = None  #: steps between periodic evaluations; null = only at the end
    eval_at_end: bool = True
    eval_metric: str = "cosine"  #: cosine | l2
    log_every: int = 10  #: steps between metrics.jsonl rows
    amp: bool = True  #: bf16 autocast (cuda only)
    channels_last: bool = True  #: (cuda only)
    compile: bool = False  #: torch.compile the model
    device: str = "auto"  #: auto | cpu | cuda


@dataclass
class TrainConfig:
    """A whole training run."""

    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def eval_options(self) -> dict[str, Any]:
        """How a run scores its model: the options of ``chammi_models.embed.evaluate_model``."""
        d, r = self.data, self.run
        return {
            "sources": d.eval_sources,
            "image_size": d.image_size,
            "batch_size": d.eval_batch_size,
            "workers": d.workers,
            "metric": r.eval_metric,
            "amp": r.amp,
        }

    def validate(self) -> TrainConfig:
        """Check value ranges and names; raise ``ValueError`` naming the key."""
        d, o, lo, r = self.data, self.optim, self.loss, self.run
        try:
            vocabulary(self.model.vocabulary)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"config {self.name!r}: model.vocabulary: {exc.args[0]}") from None
        bad = [s for s in d.train_sources if s not in RELEASE_SOURCE_KEYS]
        if bad or not d.train_sources:
            valid = list(RELEASE_SOURCE_KEYS)
            raise ValueError(f"data.train_sources: {d.train_sources} must be a non-empty subset of {valid}")
        evaluates = r.eval_at_end or r.eval_every is not None
        if [s for s in d.eval_sources if s not in SOURCES] or (evaluates and not d.eval_sources):
            raise ValueError(
                f"data.eval_sources: {d.eval_sources} must be a subset of the benchmark's sources "
                f"{list(SOURCES)}, non-empty unless run.eval_at_end is false and run.eval_every null"
            )
        if lo.proxy_lambda == 0 and lo.ssl_lambda == 0:
            raise ValueError(
                f"config {self.name!r}: loss.proxy_lambda and loss.ssl_lambda are both 0: no loss"
            )
        checks = [
            ("data.image_size", d.image_size > 0),
            ("data.batch_size", d.batch_size > 0),
            ("data.workers", d.workers >= 0),
            ("data.tps_p", 0.0 <= d.tps_p <= 1.0),
            ("data.scale", len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1),
            ("data.ratio", len(d.ratio) == 2 and 0 < d.ratio[0] <= d.ratio[1]),
            ("optim.lr", o.lr > 0),
            ("optim.min_lr", 0 <= o.min_lr <= o.lr),
            ("optim.warmup_start_lr", 0 <= o.warmup_start_lr),
            ("optim.epochs", o.epochs >= 0),
            ("optim.warmup_epochs", o.warmup_epochs >= 0),
            ("optim.max_steps", o.max_steps is None or o.max_steps >= 0),
            ("optim.warmup_steps", o.warmup_steps is None or o.warmup_steps >= 0),
            ("optim.grad_clip", o.grad_clip is None or o.grad_clip > 0),
            ("optim.betas", len(o.betas) == 2),
            ("loss.proxy_temperature", lo.proxy_temperature is None or lo.proxy_temperature > 0),
            ("loss.ssl_lambda", lo.ssl_lambda >= 0),
            ("loss.proxy_lambda", lo.proxy_lambda >= 0),
            ("data.normalisation", d.normalisation in ("source", "per_sample")),
            ("loss.ssl_temperature", lo.ssl_temperature > 0),
            ("loss.swad_start", lo.swad_start is None or lo.swad_start >= 0),
            ("run.checkpoint_every", r.checkpoint_every > 0),
            ("run.eval_every", r.eval_every is None or r.eval_every > 0),
            ("run.log_every", r.log_every > 0),
            ("run.eval_metric", r.eval_metric in ("cosine", "l2")),
            ("run.device", r.device in ("auto", "cpu", "cuda")),
        ]
        for key, ok in checks:
            if not ok:
                raise ValueError(f"config {self.name!r}: invalid value for {key}: {_get(self, key)!r}")
        return self


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def valid_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts, e.g. ``optim.lr``."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += valid_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check/convert a YAML value to the declared type; ints are accepted where floats are declared."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for i, option in enumerate(inner):  # the first member type the value fits (str | list[str], ...)
            try:
                return _coerce(value, option, key)
            except ValueError:
                if i == len(inner) - 1:
                    raise
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"config key {key}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads "1e-3" (no dot) as a string
        except ValueError:
            raise ValueError(f"config key {key}: expected a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys: "
            f"{', '.join(valid_keys(TrainConfig))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 0.0003); the value is parsed as YAML (lists, null, bools)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in valid_keys() and not key.startswith("model.options."):
        raise KeyError(
            f"unknown config key {key!r} in override {text!r}; valid keys: {', '.join(valid_keys())}"
        )
    return key.split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy is not made: ``data`` is changed and returned)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part} is not a section")
        node[path[-1]] = value
    return data


def config_from_dict(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested dict plus dotted overrides."""
    import copy

    merged = apply_overrides(copy.deepcopy(dict(data)), overrides)
    return _build(TrainConfig, merged).validate()


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a YAML config file, apply ``key=value`` overrides, validate.

    A bare name without ``.yaml`` that is not a file is looked up in the repository's ``configs/`` folder.
    """
    p = Path(path)
    if not p.exists() and p.suffix == "" and (CONFIGS_DIR / f"{p.name}.yaml").exists():
        p = CONFIGS_DIR / f"{p.name}.yaml"
    if not p.exists():
        names = ", ".join(sorted(c.stem for c in CONFIGS_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"config {str(path)!r} not found; bundled configs: {names}")
    with open(p) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{p} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config is a YAML mapping of sections, not a {type(data).__name__}")
    data.setdefault("name", p.stem)
    try:
        return config_from_dict(data, overrides)
    except (KeyError, ValueError) as exc:
        raise type(exc)(f"{p}: {exc.args[0]}") from None


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write a config as YAML (round-trips through :func:`load_config`)."""
    with open(path, "w") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)


#: The repository's bundled configs.
CONFIGS_DIR = configs_dir()
