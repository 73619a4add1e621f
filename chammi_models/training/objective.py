"""What a training step optimises: class tables, the model built for them, and the loss over channel groups.

Labels become global class indices: one proxy per (source, label) in a single label space, sources in
``SOURCE_KEYS`` order and labels sorted within a source, so the index of a class depends only on the release.
:class:`Objective` embeds every channel group of a batch in ONE module call and returns the size-weighted
proxy (+ SimCLR) loss, so DDP sees a single forward per step although the first layer differs per group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from chammi_data.format.release_format import train_mask
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS
from chammi_models.training.config import TrainConfig
from chammi_models.training.ssl import SimCLRLoss, second_views

#: One Objective group: (images (B,C,H,W), channel names, targets (B,), the source's class indices, view 2 |
#: None).
Group = tuple[Any, ...]


def class_index(manifest: Any, sources: Sequence[str]) -> dict[str, list[str]]:
    """{source: sorted training labels} from the release's ``Train`` rows: label -> class index per source.

    The global class index (one proxy per class across sources) is the position in the concatenation of
    these lists in ``RELEASE_SOURCE_KEYS`` order; see :func:`global_classes`.
    """
    out = {}
    train = manifest[train_mask(manifest["train_test_split"])]
    for src in RELEASE_SOURCE_KEYS:
        if src not in sources:
            continue
        labels = sorted(set(train.loc[train["source"] == src, "label"]))
        if not labels:
            raise ValueError(f"the release has no Train rows for source {src!r}; cannot train on it")
        out[src] = labels
    return out


def global_classes(classes: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """{source: {label: global proxy index}}; sources in ``RELEASE_SOURCE_KEYS`` order, labels sorted."""
    table, offset = {}, 0
    for src in RELEASE_SOURCE_KEYS:
        if src in classes:
            table[src] = {lab: offset + i for i, lab in enumerate(classes[src])}
            offset += len(classes[src])
    return table


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The zoo model with ``num_classes`` trainable proxies (``loss.proxy_temperature`` overrides the model's
    own default temperature option when set)."""
    from chammi_models import create_model

    m = config.model
    options = dict(m.options)
    if config.loss.proxy_temperature is not None:
        options["temperature"] = config.loss.proxy_temperature
    return create_model(
        m.name,
        channels=m.vocabulary,
        backbone=m.backbone,
        pretrained=m.pretrained,
        num_classes=num_classes,
        **options,
    )


class Objective(nn.Module):
    """The model plus everything trained with it; ``forward(groups)`` returns (loss, supervised, ssl).

    ``groups`` is a list of :data:`Group`. Every group is embedded by the same model in this one call, so
    DDP's reducer sees one forward per step even though the first layer differs per channel set. Each
    group's loss is weighted by its share of the batch, so the total is a per-sample mean.
    """

    def __init__(
        self, model: nn.Module, simclr: SimCLRLoss | None, ssl_lambda: float, proxy_lambda: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model
        self.simclr = simclr
        self.ssl_lambda = float(ssl_lambda)
        self.proxy_lambda = float(proxy_lambda)  # 0: a model without proxies, trained by SimCLR alone

    def forward(self, groups: list[Group]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_total = sum(g[0].shape[0] for g in groups)
        total = sup_total = ssl_total = None
        for images, channels, targets, classes, view2 in groups:
            b = images.shape[0]
            use_ssl = view2 is not None and self.simclr is not None and b >= 2
            feats = self.model(torch.cat([images, view2]) if use_ssl else images, channels)
            if self.proxy_lambda:
                sup = self.model.loss(feats[:b].float(), targets, classes)
            else:
                sup = feats.new_zeros((), dtype=torch.float32)
            ssl = self.simclr(feats[:b].float(), feats[b:].float()) if use_ssl else sup.new_zeros(())
            weight = b / n_total
            proxy = sup if self.proxy_lambda == 1 else self.proxy_lambda * sup  # 1: bitwise the old loss
            part = (proxy + self.ssl_lambda * ssl) * weight
            total = part if total is None else total + part
            sup_total = sup.detach() * weight if sup_total is None else sup_total + sup.detach() * weight
            ssl_total = ssl.detach() * weight if ssl_total is None else ssl_total + ssl.detach() * weight
        assert total is not None and sup_total is not None and ssl_total is not None, "empty batch"
        return total, sup_total, ssl_total


def to_groups(
    batches: list[dict[str, Any]],
    table: dict[str, dict[str, int]],
    device: torch.device,
    ssl: bool,
    channels_last: bool,
) -> list[Group]:
    """Per-channel-set batches (float images, e.g. from ``TrainData``) -> Objective groups on ``device``
    (labels -> global class indices)."""
    groups = []
    for batch in batches:
        src = batch["source"]
        if src not in table:
            raise ValueError(
                f"batch holds source {src!r} that is not among the training sources {list(table)}"
            )
        try:  # a source without classes (training without proxies): no targets
            labels = batch["label"] if table[src] else []
            targets = torch.tensor([table[src][lab] for lab in labels], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(
                f"label {exc.args[0]!r} of source {src} is not a training label {list(table[src])}"
            ) from None
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        view2 = (
            second_views(batch).to(device, non_blocking=True).contiguous(memory_format=fmt) if ssl else None
        )
        classes = torch.tensor(sorted(table[src].values()), dtype=torch.long, device=device)
        groups.append((images, tuple(batch["channels"]), targets.to(device), classes, view2))
    return groups
