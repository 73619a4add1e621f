"""Which samples of a stream the trainer has received: the exact record behind a resumable checkpoint.

A :class:`StreamTracker` reads ``meta["stream_index"]`` (a sample's position in the epoch's global order)
of everything the training loop received; ``stream.state_dict(seen=tracker.gather(epoch))`` turns that into
the stream's resumable state, in any batching and in both stream orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class StreamTracker:
    """Records which global positions the trainer received, per epoch (reads ``meta["stream_index"]``).

    ``update`` takes a sample, a batch dict, or a list of batches (``group_by_channels`` output).
    """

    def __init__(self) -> None:
        self.seen: dict[int, set[int]] = {}

    def update(self, item: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        items = item if isinstance(item, list | tuple) else [item]
        for it in items:
            metas = it["meta"] if isinstance(it["meta"], list | tuple) else [it["meta"]]
            for m in metas:
                if "stream_index" not in m:
                    raise KeyError(
                        f"sample meta has no stream_index (not from a ShardStream?): keys {sorted(m)}"
                    )
                index, epoch = m["stream_index"], m["stream_epoch"]
                if isinstance(index, torch.Tensor | list | tuple):  # meta collated by torch's default_collate
                    for e, i in zip(
                        torch.as_tensor(epoch).tolist(), torch.as_tensor(index).tolist(), strict=True
                    ):
                        self.seen.setdefault(int(e), set()).add(int(i))
                else:
                    self.seen.setdefault(int(epoch), set()).add(int(index))

    def clear(self, epoch: int | None = None) -> None:
        """Forget one epoch (e.g. after it completed), or everything."""
        if epoch is None:
            self.seen.clear()
        else:
            self.seen.pop(epoch, None)

    def positions(self, epoch: int) -> list[int]:
        """Positions of ``epoch`` received by this process, sorted."""
        return sorted(self.seen.get(epoch, ()))

    def gather(self, epoch: int) -> list[int]:
        """Positions of ``epoch`` received by any rank (a collective: call on every rank when DDP is
        initialised)."""
        mine = self.positions(epoch)
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return mine
        parts: list[list[int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, mine)
        return sorted({p for part in parts for p in (part or [])})
