"""The training data path: stream -> DataLoader workers -> integer batches -> augmentation on the device.

DataLoader workers only read, decode and stack: one integer (B, C, H, W) tensor per (batch, channel set)
(``stream(output="uint8")`` + ``group_by_channels_uint8``), pinned when training on a GPU, at a quarter of the
bytes of float samples. Workers are persistent across epochs and follow ``set_epoch`` and resumed states
through the stream's shared memory. The float conversion, the paper's augmentation (TPS, RandomResizedCrop,
flip) and the per-channel normalisation run on the training device (:class:`DeviceTransform`), with the same
per-sample seeds as the float path, so CPU results are bitwise those of augmenting in the workers.

Progress is recorded per sample (a :class:`StreamTracker`), so a checkpoint is exact in both stream orders
(``data.stream_order``: ``exact`` for local releases, ``shards`` for remote ones by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from chammi_data.augment.device import DeviceTransform
from chammi_data.augment.guided_crop import GuidedCrop
from chammi_data.augment.transforms import PER_SAMPLE, train_transform
from chammi_data.loading.collate import group_by_channels_uint8
from chammi_data.loading.stream_tracker import StreamTracker
from chammi_data.loading.streaming import ShardStream
from chammi_models.training.config import TrainConfig
from chammi_models.training.ssl import TwoViews


def augmentation(config: TrainConfig) -> Any:
    """The sample transform of training: the paper's recipe, wrapped in TwoViews when SimCLR is on."""
    d = config.data
    transform: Any = train_transform(
        d.image_size,
        tuple(d.scale),
        tuple(d.ratio),
        hflip=0.5 if d.hflip else 0.0,
        tps_p=d.tps_p,
        stats=PER_SAMPLE if d.normalisation == "per_sample" else None,
    )
    return TwoViews(transform) if config.loss.ssl_lambda > 0 else transform


def make_stream(config: TrainConfig, release: Any, rank: int, world: int) -> ShardStream:
    """This rank's training stream: integer samples, ``worker_block`` = the per-rank batch (each DataLoader
    batch is one worker's block, which keeps the order independent of the worker count in ``exact`` order)."""
    d = config.data
    return ShardStream(
        release,
        split="train",
        sources=list(d.train_sources),
        seed=config.run.seed,
        shuffle=True,
        rank=rank,
        world_size=world,
        drop_last=True,
        worker_block=d.batch_size // world,
        order=d.stream_order,
        buffer=d.shuffle_buffer,
        readahead=d.readahead,
        output="uint8",
        workers=d.workers,
        cache_dir=d.cache_dir,
        guided_crop=GuidedCrop(d.image_size, d.crop_table) if d.guided_crop else None,
    )


class TrainData:
    """The stream, its DataLoader, the device-side augmentation and the progress record of one rank."""

    def __init__(
        self, config: TrainConfig, release: Any, rank: int, world: int, device: torch.device
    ) -> None:
        d = config.data
        self.stream = make_stream(config, release, rank, world)
        self.loader = DataLoader(
            self.stream,
            batch_size=d.batch_size // world,
            collate_fn=partial(group_by_channels_uint8, bag_of_channels=d.bag_of_channels),
            num_workers=d.workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            persistent_workers=d.workers > 0,
        )
        self.augment = DeviceTransform(augmentation(config))
        self.device = device
        self.tracker = StreamTracker()
        self.epoch = 0

    def epoch_batches(
        self, epoch: int, state: dict[str, Any] | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """The batches of ``epoch`` (from ``state`` when resuming inside it): lists of per-channel-set batches
        with float images on the device."""
        if epoch != self.epoch:
            self.tracker.clear(self.epoch)
        self.epoch = epoch
        self.stream.set_epoch(epoch)
        if state is not None:
            self.stream.load_state_dict(state)
        for groups in self.loader:
            self.tracker.update(groups)
            yield [self.augment(g, self.device) for g in groups]

    def state_dict(self) -> dict[str, Any]:
        """The stream position for a checkpoint: every sample any rank received (a collective under DDP)."""
        return self.stream.state_dict(seen=self.tracker.gather(self.epoch))
