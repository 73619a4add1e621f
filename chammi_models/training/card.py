"""The weights card of a training run: what the final weights of ``chammi train`` record beyond the model.

:func:`chammi_models.zoo.weights.save_model` writes the model's own card (architecture, channels, hash); a
training run adds the fields here: its name and config, the data it saw, class lists, input size and
normalisation, and its final scores.
"""

from __future__ import annotations

from typing import Any

from chammi_data.augment.transforms import PER_SAMPLE
from chammi_data.format.vocab import SOURCES
from chammi_models.training.config import TrainConfig


def training_card(
    config: TrainConfig,
    *,
    classes: dict[str, list[str]],
    release: dict[str, Any],
    scores: dict[str, Any] | None,
    step: int,
    swad: Any = None,
) -> dict[str, Any]:
    """The card fields of a training run's final weights, for :func:`save_model` to add to the model's own.

    Records the run (name, config, steps, SWAD averaging), the data it saw (``release``: the release identity
    from ``chammi_models.embed.release_identity``, plus the training sources), the class list of every
    source (``classes``: {source: sorted labels}, the proxy order), what an input needs (``img_size`` and
    ``normalisation``: {source: {channel: [mean, std]}} on the [0, 1] scale, or ``"per_sample"`` for a model
    trained on per-sample normalised inputs such as CHAMMI-75's) and the final ``scores``.
    """
    d = config.data
    return {
        "run_name": config.name,
        "img_size": d.image_size,
        "normalisation": PER_SAMPLE
        if d.normalisation == PER_SAMPLE
        else {src: SOURCES[src].stats() for src in SOURCES},
        "class_lists": classes,
        "training_data": {**release, "train_sources": list(d.train_sources)},
        "config": config.to_dict(),
        "steps": step,
        "swad": None if swad is None else {"start_step": swad.start_step, "averaged_steps": swad.count},
        "scores": None
        if scores is None
        else {"cps": scores["cps"], "metric": scores["metric"], "table": scores["table"]},
    }
