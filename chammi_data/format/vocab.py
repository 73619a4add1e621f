"""The channel vocabulary and the three CHAMMI sources: the one place that knows them.

Every other module asks here. Channel identity always travels as names from ``VOCAB`` (or indices into
it), never inferred from a source key alone. Normalisation statistics are keyed by (source, channel).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: The eight channel names, in the conventional (alphabetical) order. Index = position in this tuple.
VOCAB: tuple[str, ...] = ("er", "golgi", "membrane", "microtubules", "mito", "nucleus", "protein", "rna")

#: Display colours (hex RGB, OME-NGFF ``omero.channels[].color`` style) per channel name.
CHANNEL_COLORS: dict[str, str] = {
    "er": "FFFF00",
    "golgi": "FF8000",
    "membrane": "FF00FF",
    "microtubules": "FF0000",
    "mito": "00FFFF",
    "nucleus": "0000FF",
    "protein": "00FF00",
    "rna": "FFFFFF",
}


@dataclass(frozen=True)
class SourceInfo:
    """Facts about one CHAMMI source: channels, tile size, training-split statistics, grouping column,
    tasks."""

    key: str  #: our key: wtc11 | hpa | cp
    folder: str  #: folder name in the official release: Allen | HPA | CP
    channels: tuple[str, ...]  #: channel names in tile order
    tile_hw: tuple[int, int]  #: (H, W) of one channel tile
    mean: tuple[float, ...]  #: training-split per-channel mean on the [0, 1] scale, in ``channels`` order
    std: tuple[float, ...]  #: training-split per-channel std on the [0, 1] scale
    group_column: str  #: the grouping column of the source's metadata (Structure, cell_type, Plate)
    tasks: tuple[str, ...]  #: the task columns of this source

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def stats(self) -> dict[str, tuple[float, float]]:
        """{channel name: (mean, std)} on the [0, 1] scale."""
        return {c: (m, s) for c, m, s in zip(self.channels, self.mean, self.std, strict=True)}


SOURCES: dict[str, SourceInfo] = {
    "wtc11": SourceInfo(
        key="wtc11",
        folder="Allen",
        channels=("nucleus", "membrane", "protein"),
        tile_hw=(238, 374),
        mean=(0.1730, 0.2120, 0.0672),
        std=(0.1804, 0.1948, 0.0877),
        group_column="Structure",
        tasks=("Task_one", "Task_two"),
    ),
    "hpa": SourceInfo(
        key="hpa",
        folder="HPA",
        channels=("microtubules", "protein", "nucleus", "er"),
        tile_hw=(512, 512),
        mean=(0.0829, 0.0411, 0.0640, 0.0845),
        std=(0.0811, 0.0528, 0.0886, 0.0816),
        group_column="cell_type",
        tasks=("Task_one", "Task_two", "Task_three"),
    ),
    "cp": SourceInfo(
        key="cp",
        folder="CP",
        channels=("nucleus", "er", "rna", "golgi", "mito"),
        tile_hw=(160, 160),
        mean=(0.0996, 0.1923, 0.1625, 0.1824, 0.1498),
        std=(0.0773, 0.0744, 0.0678, 0.0665, 0.0682),
        group_column="Plate",
        tasks=("Task_one", "Task_two", "Task_three", "Task_four"),
    ),
}

#: Source keys in canonical order.
SOURCE_KEYS: tuple[str, ...] = tuple(SOURCES)
#: Every task column name, in order.
TASK_COLUMNS: tuple[str, ...] = ("Task_one", "Task_two", "Task_three", "Task_four")
#: Tasks whose query set is scored leave-one-group-out, with the grouping column.
LOGO_TASKS: dict[tuple[str, str], str] = {("hpa", "Task_three"): "cell_type", ("cp", "Task_four"): "Plate"}
#: The tasks that count in the CHAMMI Performance Score, with their weights.
CPS_WEIGHTS: dict[tuple[str, str], float] = {
    ("wtc11", "Task_two"): 1 / 3,
    ("hpa", "Task_two"): 1 / 6,
    ("hpa", "Task_three"): 1 / 6,
    ("cp", "Task_two"): 1 / 9,
    ("cp", "Task_three"): 1 / 9,
    ("cp", "Task_four"): 1 / 9,
}

_FOLDER_TO_KEY = {info.folder.lower(): key for key, info in SOURCES.items()}


def source_info(name: str) -> SourceInfo:
    """Look up a source by our key (``wtc11``) or its release folder name (``Allen``), case-insensitive."""
    key = name.lower()
    key = _FOLDER_TO_KEY.get(key, key)
    if key not in SOURCES:
        valid = ", ".join(f"{k} ({v.folder})" for k, v in SOURCES.items())
        raise KeyError(f"unknown source {name!r}; valid sources: {valid}")
    return SOURCES[key]


def channel_index(name: str) -> int:
    """Index of a channel name in ``VOCAB``; a clear error listing the vocabulary otherwise."""
    try:
        return VOCAB.index(name)
    except ValueError:
        raise KeyError(f"unknown channel {name!r}; the vocabulary is {', '.join(VOCAB)}") from None


def to_names(channels: Iterable[str | int]) -> tuple[str, ...]:
    """Normalise channel names or vocabulary indices to a tuple of names, checking each one.

    Raises ``KeyError`` for an unknown name or an index outside the vocabulary and ``ValueError`` for a
    channel that appears twice.
    """
    names: list[str] = []
    for c in channels:
        if isinstance(c, str):
            channel_index(c)
            names.append(c)
        else:
            i = int(c)
            if not 0 <= i < len(VOCAB):
                raise KeyError(
                    f"channel index {i} outside the vocabulary of {len(VOCAB)} names ({', '.join(VOCAB)})"
                )
            names.append(VOCAB[i])
    if len(set(names)) != len(names):
        raise ValueError(f"channel list {names} names a channel twice")
    return tuple(names)


def to_indices(channels: Sequence[str | int]) -> tuple[int, ...]:
    """Vocabulary indices of channel names (or indices), checked like :func:`to_names`."""
    return tuple(VOCAB.index(n) for n in to_names(channels))


def normalisation_stats(
    source: str, channels: Sequence[str] | None = None
) -> tuple[list[float], list[float]]:
    """(mean, std) lists for ``channels`` of ``source`` (default: all of its channels, tile order)."""
    info = source_info(source)
    stats = info.stats()
    chans = info.channels if channels is None else to_names(channels)
    missing = [c for c in chans if c not in stats]
    if missing:
        raise KeyError(f"source {info.key} has no channel(s) {missing}; it has {list(info.channels)}")
    return [stats[c][0] for c in chans], [stats[c][1] for c in chans]
