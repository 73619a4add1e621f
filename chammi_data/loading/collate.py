"""Batching samples with different channel sets (WTC 3, HPA 4, CP 5 channels).

Two strategies, both deterministic:

- :func:`group_by_channels` (use as a DataLoader ``collate_fn``): a mixed batch of samples is split into one
  sub-batch per (source, channel set), as in the paper, where each source group gets its own forward pass
  and the losses are summed before one optimizer step. The list is ordered by ``RELEASE_SOURCE_KEYS`` then
  channel tuple; inside a group the samples keep their input order.
- :class:`HomogeneousBatcher`: wraps a sample iterable (e.g. a
  :class:`~chammi_data.loading.streaming.ShardStream`) and yields whole batches whose samples share one
  (source, channel set), buffering per key.

**Bag of channels** (the recipe of the CHAMMI-75 reference model): :func:`split_channels` turns each sample
into one single-channel sample per channel, and ``group_by_channels_uint8(samples, bag_of_channels=True)``
does it inside the DataLoader's collate, so a batch of B images becomes one batch per channel name. Each
channel sample keeps its image's ``stream_index`` (progress is counted per image, and a batch always holds
whole images, so a checkpoint stays exact) and gets its own augmentation seed.

A batch is ``{"image": (B, C, H, W) float, "channels": tuple[str], "source": str, "label": list[str],
"cell_id": list[str], "meta": list[dict]}`` (docs/CONTRACTS.md).

torch's default collate cannot batch a mix of sources: it stacks images with 3, 4 and 5 channels and fails
with "stack expects each tensor to be equal size". Pass ``collate_fn=group_by_channels`` (also
``ReleaseDataset.collate_fn``) to the ``DataLoader``, or load one source per dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate

from chammi_data.format.release_format import to_float_tensor
from chammi_data.format.vocab import RELEASE_SOURCE_KEYS

Sample = dict[str, Any]
Batch = dict[str, Any]
GroupKey = tuple[str, tuple[str, ...]]


def group_key(sample: Sample) -> GroupKey:
    """(source, channel tuple) of a sample: samples with equal keys can share one stacked tensor."""
    return str(sample["source"]), tuple(sample["channels"])


def _sort_key(key: GroupKey) -> tuple[int, str, tuple[str, ...]]:
    source, channels = key
    # Unknown sources (should not happen) sort after the known ones, by name, rather than failing here.
    rank = RELEASE_SOURCE_KEYS.index(source) if source in RELEASE_SOURCE_KEYS else len(RELEASE_SOURCE_KEYS)
    return rank, source, channels


def _as_tensor(image: Any, raw: bool = False) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        return torch.from_numpy(image) if raw else to_float_tensor(image)
    return torch.as_tensor(image)


def collate_homogeneous(samples: Sequence[Sample], raw: bool = False) -> Batch:
    """Stack samples that share source and channels into one batch dict.

    ``raw``: integer images (``stream(output="uint8")``) stay integer, one (B, C, H, W) uint8/uint16 tensor,
    for :class:`~chammi_data.augment.device.DeviceTransform` to convert on the training device.
    Raises ``ValueError`` naming the offending cell ids when sources, channels or image shapes differ.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    first = samples[0]
    key = group_key(first)
    images: list[Any] = []
    for s in samples:
        if group_key(s) != key:
            raise ValueError(
                f"cannot stack sample {s.get('cell_id')!r} {group_key(s)} with {first.get('cell_id')!r} "
                f"{key}: "
                "different source or channels; batch mixed sources with "
                "chammi_data.loading.collate.group_by_channels "
                "(DataLoader(..., collate_fn=group_by_channels), also ReleaseDataset.collate_fn)"
            )
        img = _as_tensor(s["image"], raw)
        if img.ndim != 3 or img.shape[0] != len(key[1]):
            raise ValueError(
                f"sample {s.get('cell_id')!r}: image shape {tuple(img.shape)} does not match channels "
                f"{key[1]}"
            )
        if images and img.shape != images[0].shape:
            raise ValueError(
                f"cannot stack sample {s.get('cell_id')!r} of shape {tuple(img.shape)} with "
                f"{first.get('cell_id')!r} of "
                f"shape {tuple(images[0].shape)}: crop or resize to a common size first (e.g. "
                "train_transform)"
            )
        images.append(img)
    return {
        # default_collate stacks straight into shared memory inside a DataLoader worker (no copy when the
        # batch crosses to the main process); elsewhere it is torch.stack
        "image": default_collate(images) if raw else torch.stack(images),
        "channels": key[1],
        "source": key[0],
        "label": [s["label"] for s in samples],
        "cell_id": [s["cell_id"] for s in samples],
        "meta": [s.get("meta", {}) for s in samples],
    }


def split_channels(samples: Iterable[Sample]) -> list[Sample]:
    """Each sample as C single-channel samples (image (1, H, W), ``channels`` one name), in order; ``meta``
    gains ``channel`` (its index in the image) and, for a sample of ``stream(output="uint8")``, its own
    ``aug_seed`` derived from the image's and the channel index (the channels are augmented independently)."""
    out = []
    for s in samples:
        names = tuple(s["channels"])
        for k, name in enumerate(names):
            meta = {**s.get("meta", {}), "channel": k}
            if "aug_seed" in meta:
                seq = np.random.SeedSequence([int(meta["aug_seed"]), k])
                meta["aug_seed"] = int(seq.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)
            out.append({**s, "image": s["image"][k : k + 1], "channels": (name,), "meta": meta})
    return out


def group_by_channels_uint8(samples: Iterable[Sample], bag_of_channels: bool = False) -> list[Batch]:
    """:func:`group_by_channels` for integer samples (``stream(output="uint8")``): each group's images stay
    one integer (B, C, H, W) tensor, so a DataLoader worker ships one shared-memory block per channel set at a
    quarter of the float bytes, and the float math runs on the training device. ``bag_of_channels``: split
    the samples into single-channel ones first (:func:`split_channels`)."""
    if bag_of_channels:
        samples = split_channels(samples)
    groups: dict[GroupKey, list[Sample]] = {}
    for s in samples:
        groups.setdefault(group_key(s), []).append(s)
    return [collate_homogeneous(groups[k], raw=True) for k in sorted(groups, key=_sort_key)]


def group_by_channels(samples: Iterable[Sample]) -> list[Batch]:
    """Split a mixed list of samples into homogeneous batches, one per (source, channel set).

    Order: by position of the source in ``RELEASE_SOURCE_KEYS``, then by channel tuple; within a group, input
    order.
    Use it directly as ``DataLoader(..., collate_fn=group_by_channels)``.
    """
    groups: dict[GroupKey, list[Sample]] = {}
    for s in samples:
        groups.setdefault(group_key(s), []).append(s)
    return [collate_homogeneous(groups[k]) for k in sorted(groups, key=_sort_key)]


class HomogeneousBatcher(IterableDataset):
    """Yield batches of ``batch_size`` samples that all share one (source, channel set).

    Samples from ``samples`` are appended to a buffer per key; a buffer is emitted as a batch as soon as it
    holds ``batch_size`` samples. When the input ends the partial buffers are emitted in
    ``RELEASE_SOURCE_KEYS`` /
    channel order (or dropped with ``drop_last``). The output depends only on the input order.

    ``max_buffered`` bounds memory: when the buffers together hold that many samples, the fullest one is
    flushed early as a smaller batch (ties: the key that sorts first; with ``drop_last`` it is dropped).
    Default ``None``: no early flushes; at most ``batch_size - 1`` samples per key are held.

    It is an ``IterableDataset``: wrapping a :class:`ShardStream` and passing the batcher to
    ``DataLoader(batcher, batch_size=None, num_workers=K)`` makes each worker batch its own slice of the
    stream. ``set_epoch``/``state_dict``/``load_state_dict`` are forwarded to the wrapped stream. Each
    sample's ``meta`` keeps its ``stream_index``, so progress can be tracked even though buffering reorders
    samples (see :class:`chammi_data.loading.stream_tracker.StreamTracker`).
    """

    def __init__(
        self,
        samples: Iterable[Sample],
        batch_size: int,
        drop_last: bool = False,
        max_buffered: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_buffered is not None and max_buffered < batch_size:
            raise ValueError(f"max_buffered ({max_buffered}) must be >= batch_size ({batch_size})")
        self.samples = samples
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.max_buffered = max_buffered

    def __iter__(self) -> Iterator[Batch]:
        buffers: dict[GroupKey, list[Sample]] = {}
        held = 0
        for s in self.samples:
            key = group_key(s)
            buf = buffers.setdefault(key, [])
            buf.append(s)
            held += 1
            if len(buf) == self.batch_size:
                held -= len(buf)
                buffers[key] = []
                yield collate_homogeneous(buf)
                continue
            if self.max_buffered is not None and held >= self.max_buffered:
                fullest = min(buffers, key=lambda k: (-len(buffers[k]), _sort_key(k)))
                out = buffers[fullest]
                buffers[fullest] = []
                held -= len(out)
                if not self.drop_last:
                    yield collate_homogeneous(out)
        if self.drop_last:
            return
        for key in sorted(buffers, key=_sort_key):
            if buffers[key]:
                yield collate_homogeneous(buffers[key])

    # Forward the stream's epoch/resume API so the batcher can stand in for it in a training loop.
    def set_epoch(self, epoch: int) -> None:
        self.samples.set_epoch(epoch)  # type: ignore[attr-defined]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.samples.state_dict(*args, **kwargs)  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples.load_state_dict(state)  # type: ignore[attr-defined]
