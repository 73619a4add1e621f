"""A montage of example cells per source and class, every channel tile labelled with its channel name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from chammi_data.format.vocab import SOURCES


def _tile_row(images: Sequence[np.ndarray], pad: int) -> np.ndarray:
    """(C, H, W) images -> one 2-D strip: per cell its C channel tiles side by side, cells separated by
    ``pad``."""
    tiles = []
    for img in images:
        c, h, w = img.shape
        strip = np.ones((h, c * w + (c - 1) * 2), dtype=np.float32)
        for k in range(c):
            ch = img[k].astype(np.float32)
            hi = float(np.percentile(ch, 99.5)) or 1.0  # per-tile contrast stretch for display only
            strip[:, k * (w + 2) : k * (w + 2) + w] = np.clip(ch / hi, 0, 1)
        tiles.append(strip)
        tiles.append(np.ones((tiles[-1].shape[0], pad), dtype=np.float32))
    return np.concatenate(tiles[:-1], axis=1)


def save_montage(
    examples: Mapping[str, Mapping[str, Sequence[np.ndarray]]],
    path: str | Path,
    channels: Mapping[str, Sequence[str]] | None = None,
    tile: int = 64,
) -> Path:
    """Write a PNG montage.

    ``examples[source][label]`` is a list of (C, H, W) arrays (any dtype); every cell is resized to ``tile`` x
    ``tile`` per channel for display. One block per source, one row per class, the channel names above the
    first cell of each block. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.transform import resize

    blocks = []
    for source, by_label in examples.items():
        if not by_label:
            continue
        names = list((channels or {}).get(source) or SOURCES[source].channels)
        rows = []
        for label in sorted(by_label):
            cells = [
                resize(
                    np.asarray(im, dtype=np.float32),
                    (im.shape[0], tile, tile),
                    anti_aliasing=True,
                    preserve_range=True,
                )
                for im in by_label[label]
            ]
            if cells:
                rows.append((label, _tile_row(cells, pad=8)))
        if rows:
            blocks.append((source, names, rows))
    if not blocks:
        raise ValueError("montage: no example cells given")
    heights = [len(rows) for _, _, rows in blocks]
    width = max(strip.shape[1] for _, _, rows in blocks for _, strip in rows)
    fig_w = 2.2 + width / 90
    fig, axes = plt.subplots(
        len(blocks),
        1,
        figsize=(fig_w, sum(heights) * (tile / 90 + 0.25) + 0.9 * len(blocks)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (source, names, rows) in zip(axes[:, 0], blocks, strict=True):
        canvas = np.ones((len(rows) * (tile + 6), width), dtype=np.float32)
        for r, (_, strip) in enumerate(rows):
            canvas[r * (tile + 6) : r * (tile + 6) + tile, : strip.shape[1]] = strip
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="equal")
        ax.set_yticks(
            [r * (tile + 6) + tile / 2 for r in range(len(rows))], [lab for lab, _ in rows], fontsize=8
        )
        ax.set_xticks([k * (tile + 2) + tile / 2 for k in range(len(names))], names, fontsize=7, rotation=30)
        ax.xaxis.tick_top()
        ax.set_title(f"{source} ({SOURCES[source].folder}): channels {', '.join(names)}", fontsize=9, pad=18)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
