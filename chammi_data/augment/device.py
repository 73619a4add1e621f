"""Augmentation on the training device: integer batches from DataLoader workers in, float batches out.

DataLoader workers of a ``stream(output="uint8")`` only read, decode and stack (one integer tensor per channel
set, :func:`chammi_data.loading.collate.group_by_channels_uint8`); :class:`DeviceTransform` then converts to
float, augments and normalises each sample on the device the model runs on, with the per-sample seed the
stream put in ``meta["aug_seed"]``. It calls the same sample transforms with the same seeds as the float path
(``stream(output="float", transform=...)``), so on the CPU the result is bitwise the same tensors; on a GPU
the same operations run there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from chammi_data.augment.transforms import accepts_generator, apply_seeded
from chammi_data.format.release_format import make_sample, to_float_tensor


class DeviceTransform:
    """``batch -> batch`` with ``image`` a float (B, C, h, w) tensor on ``device``, each sample transformed by
    ``transform`` seeded from its ``meta["aug_seed"]`` (``meta`` may gain keys, e.g. ``view2``)."""

    def __init__(self, transform: Callable[..., dict[str, Any]] | None) -> None:
        self.transform = transform
        self._takes_generator = transform is not None and accepts_generator(transform)

    def __call__(
        self, batch: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = True
    ) -> dict[str, Any]:
        images = batch["image"]
        if device is not None:
            images = images.to(device, non_blocking=non_blocking)
        out_images, metas = [], []
        for i in range(images.shape[0]):
            meta = dict(batch["meta"][i])
            if "aug_seed" not in meta:
                raise KeyError(
                    f"sample {batch['cell_id'][i]!r} has no meta['aug_seed']: stream it with output='uint8'"
                )
            sample = make_sample(
                to_float_tensor(images[i]),
                channels=batch["channels"],
                source=batch["source"],
                label=batch["label"][i],
                cell_id=batch["cell_id"][i],
                meta=meta,
            )
            sample = apply_seeded(self.transform, sample, int(meta["aug_seed"]), self._takes_generator)
            out_images.append(sample["image"])
            metas.append(sample["meta"])
        return {**batch, "image": torch.stack(out_images), "meta": metas}

    def __repr__(self) -> str:
        return f"DeviceTransform({self.transform!r})"
