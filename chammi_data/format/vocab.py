"""The channel registry and the sources of a release: the one place that knows them.

Every other module asks here. Channel identity always travels as names (or indices into :data:`CHANNELS`),
never inferred from a source key alone. Normalisation statistics are keyed by (source, channel).

**Channel registry.** Two benchmarks name their channels differently:

- CHAMMI's eight names, :data:`VOCAB` (``er, golgi, membrane, microtubules, mito, nucleus, protein,
  rna``), the default vocabulary of every model (the paper's parameter counts are for it);
- CHAMMI-75's 25 channel types, :data:`CHAMMI75_CHANNELS`, exactly as its metadata spells them
  (``imaging.channel_type``).

:data:`CHANNELS` holds every known name once: CHAMMI's eight first (so the indices 0-7 stay what they were),
then the CHAMMI-75 types that CHAMMI lacks. Seven names are shared and mean the same stain in both (``er``,
``golgi``, ``membrane``, ``microtubules``, ``nucleus``, ``protein``, ``rna``). Two CHAMMI names differ from
their CHAMMI-75 counterpart; :data:`SYNONYMS` is the table, and :func:`translate_channels` applies it when a
model trained on one benchmark embeds the other (an opt-in: nothing is translated silently):

========== ============== ===============================================================================
CHAMMI     CHAMMI-75      why
========== ============== ===============================================================================
``mito``   mitochondria   the same organelle stain (MitoTracker in Cell Painting); CHAMMI abbreviates it
``golgi``  agp            CHAMMI's only ``golgi`` channel is Cell Painting's AGP stain (phalloidin for
                          actin + wheat germ agglutinin for Golgi and plasma membrane: "Actin, Golgi,
                          Plasma membrane"). CHAMMI-75 calls that stain ``agp`` and keeps ``golgi`` for
                          dedicated Golgi markers, so CHAMMI's golgi maps to ``agp``, not to ``golgi``
========== ============== ===============================================================================

In the other direction ``mitochondria -> mito`` and ``agp -> golgi``; CHAMMI-75's own ``golgi`` keeps its name
(the closest CHAMMI channel), and an image holding both ``agp`` and ``golgi`` cannot be translated (two
channels would get one name: an error). CHAMMI-75 types with no CHAMMI counterpart (``bright-field``,
``KTR``, ...) are an error naming them; drop them first (``ChannelSubset``) to embed the rest.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: CHAMMI's eight channel names, in the conventional (alphabetical) order: the default model vocabulary.
VOCAB: tuple[str, ...] = ("er", "golgi", "membrane", "microtubules", "mito", "nucleus", "protein", "rna")

#: CHAMMI-75's 25 channel types, exactly as spelled in its metadata (``imaging.channel_type``), sorted.
CHAMMI75_CHANNELS: tuple[str, ...] = (
    "KTR",
    "agp",
    "assorted",
    "b",
    "bright-field",
    "cell body",
    "centrosomes",
    "circadian rhythm",
    "cytoskeleton",
    "cytosol",
    "dark-field",
    "differential interference contrast (DIC)",
    "er",
    "g",
    "golgi",
    "membrane",
    "microtubules",
    "mitochondria",
    "nucleus",
    "phase-contrast",
    "proliferation",
    "protein",
    "r",
    "rna",
    "sub-nuclear",
)

#: Every known channel name, each once: VOCAB first (indices 0-7 unchanged), then the CHAMMI-75 types that
#: CHAMMI lacks, in CHAMMI-75's order. A channel index is a position in this tuple.
CHANNELS: tuple[str, ...] = VOCAB + tuple(c for c in CHAMMI75_CHANNELS if c not in VOCAB)

#: Named vocabularies a model can be built for (``create_model(..., channels="chammi75")``).
VOCABULARIES: dict[str, tuple[str, ...]] = {"chammi": VOCAB, "chammi75": CHAMMI75_CHANNELS, "all": CHANNELS}


@dataclass(frozen=True)
class Synonym:
    """One row of the synonym table: a CHAMMI name, its CHAMMI-75 counterpart and why."""

    chammi: str
    chammi75: str
    reason: str


#: The names that differ between the benchmarks (module docstring); every other shared name maps to itself.
SYNONYMS: tuple[Synonym, ...] = (
    Synonym("mito", "mitochondria", "same organelle stain; CHAMMI abbreviates the name"),
    Synonym(
        "golgi",
        "agp",
        "CHAMMI's golgi channel is Cell Painting's AGP stain (actin, Golgi, plasma membrane), which "
        "CHAMMI-75 calls agp",
    ),
)

#: Translation directions of :func:`translate_channels`: (from, to) vocabulary names.
TRANSLATIONS: dict[str, tuple[str, str]] = {
    "chammi->chammi75": ("chammi", "chammi75"),
    "chammi75->chammi": ("chammi75", "chammi"),
}

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
    "KTR": "80FF00",
    "agp": "FF8000",
    "assorted": "C0C0C0",
    "b": "0000FF",
    "bright-field": "FFFFFF",
    "cell body": "FF00FF",
    "centrosomes": "FF4040",
    "circadian rhythm": "FFC000",
    "cytoskeleton": "FF0000",
    "cytosol": "00FF80",
    "dark-field": "FFFFFF",
    "differential interference contrast (DIC)": "FFFFFF",
    "g": "00FF00",
    "mitochondria": "00FFFF",
    "phase-contrast": "FFFFFF",
    "proliferation": "FF0080",
    "r": "FF0000",
    "sub-nuclear": "8080FF",
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


@dataclass(frozen=True)
class VariableSourceInfo:
    """A source whose images vary in channel set and size from image to image (CHAMMI-75).

    It is not a CHAMMI benchmark source: it has no tile size, no tasks and no fixed statistics, and the
    protocol (1-NN tasks, CPS) never sees it. Its images are normalised per sample (each channel by its own
    mean and std) unless a caller gives statistics.
    """

    key: str  #: our key in a release (manifest ``source``, shard and zarr names)
    name: str  #: the dataset's own name
    channels: tuple[str, ...]  #: every channel name its images may carry
    normalisation: str = "per_sample"


#: Sources a release may hold besides CHAMMI's three: they are stored and streamed, never scored by CPS.
#: Besides CHAMMI-75's training images, the test sets of its benchmark suite (one release source per
#: benchmark, keyed by its build source name; ``chammi_data.evaluation.benchmarks`` scores them): their
#: channels are CHAMMI-75 types and their image sizes vary (RBC-MC images, IDR0017 patches), so they are
#: stored as image groups like CHAMMI-75.
VARIABLE_SOURCES: dict[str, VariableSourceInfo] = {
    "chammi75": VariableSourceInfo("chammi75", "CHAMMI-75", CHAMMI75_CHANNELS),
    "rbc_mc": VariableSourceInfo("rbc_mc", "RBC-MC", CHAMMI75_CHANNELS),
    "idr0017": VariableSourceInfo("idr0017", "IDR0017", CHAMMI75_CHANNELS),
    "cellphie": VariableSourceInfo("cellphie", "CellPHIE", CHAMMI75_CHANNELS),
    "jumpcp": VariableSourceInfo("jumpcp", "JUMP-CP", CHAMMI75_CHANNELS),
    "hpav23": VariableSourceInfo("hpav23", "HPAv23", CHAMMI75_CHANNELS),
}
#: Every source key a release may hold, in release order (CHAMMI's three first).
RELEASE_SOURCE_KEYS: tuple[str, ...] = SOURCE_KEYS + tuple(VARIABLE_SOURCES)

_FOLDER_TO_KEY = {info.folder.lower(): key for key, info in SOURCES.items()}


def source_info(name: str) -> SourceInfo:
    """Look up a CHAMMI source by our key (``wtc11``) or its release folder name (``Allen``),
    case-insensitive."""
    key = name.lower()
    key = _FOLDER_TO_KEY.get(key, key)
    if key not in SOURCES:
        valid = ", ".join(f"{k} ({v.folder})" for k, v in SOURCES.items())
        also = f" ({key} is not a CHAMMI benchmark source)" if key in VARIABLE_SOURCES else ""
        raise KeyError(f"unknown source {name!r}{also}; valid sources: {valid}")
    return SOURCES[key]


def release_source(name: str) -> str:
    """The key of any source a release may hold: a CHAMMI source (key or folder name) or a variable one."""
    low = name.lower()
    if low in VARIABLE_SOURCES:
        return low
    key = _FOLDER_TO_KEY.get(low, low)
    if key not in SOURCES:
        valid = ", ".join([*(f"{k} ({v.folder})" for k, v in SOURCES.items()), *VARIABLE_SOURCES])
        raise KeyError(f"unknown source {name!r}; valid sources: {valid}")
    return key


def is_variable(source: str) -> bool:
    """True for a source whose images vary in channels and size (:data:`VARIABLE_SOURCES`)."""
    return source in VARIABLE_SOURCES


def _unknown_channel(name: object) -> KeyError:
    close = difflib.get_close_matches(str(name), CHANNELS, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return KeyError(
        f"unknown channel {name!r}{hint}; the vocabulary of known channels (CHAMMI's 8 names and CHAMMI-75's "
        f"25 types, chammi_data.format.vocab.CHANNELS) is: {', '.join(CHANNELS)}"
    )


def channel_index(name: str) -> int:
    """Index of a channel name in :data:`CHANNELS` (VOCAB's names keep 0-7); a clear error otherwise."""
    try:
        return CHANNELS.index(name)
    except ValueError:
        raise _unknown_channel(name) from None


def to_names(channels: Iterable[str | int]) -> tuple[str, ...]:
    """Normalise channel names or registry indices to a tuple of names, checking each one.

    Raises ``KeyError`` for an unknown name (with close matches and the list of known names) or an index
    outside :data:`CHANNELS`, and ``ValueError`` for a channel that appears twice.
    """
    names: list[str] = []
    for c in channels:
        if isinstance(c, str):
            if c not in _CHANNEL_SET:
                raise _unknown_channel(c)
            names.append(c)
        else:
            i = int(c)
            if not 0 <= i < len(CHANNELS):
                raise KeyError(f"channel index {i} outside the vocabulary of {len(CHANNELS)} known channels")
            names.append(CHANNELS[i])
    if len(set(names)) != len(names):
        raise ValueError(f"channel list {names} names a channel twice")
    return tuple(names)


_CHANNEL_SET = frozenset(CHANNELS)


def to_indices(channels: Sequence[str | int]) -> tuple[int, ...]:
    """Registry indices of channel names (or indices), checked like :func:`to_names`."""
    return tuple(CHANNELS.index(n) for n in to_names(channels))


def vocabulary(channels: str | Sequence[str | int]) -> tuple[str, ...]:
    """A model vocabulary: a named one (:data:`VOCABULARIES`: ``chammi``, ``chammi75``, ``all``) or an
    explicit list of channel names / indices, checked."""
    if isinstance(channels, str):
        if channels not in VOCABULARIES:
            raise KeyError(
                f"unknown vocabulary {channels!r}; named vocabularies: {', '.join(VOCABULARIES)} "
                "(or give a list of channel names)"
            )
        return VOCABULARIES[channels]
    return to_names(channels)


def vocabulary_name(channels: Sequence[str]) -> str:
    """The name of the named vocabulary equal to ``channels`` (same names, same order), else ``custom``."""
    return next((k for k, v in VOCABULARIES.items() if tuple(channels) == v), "custom")


def translate_channels(channels: Iterable[str], direction: str) -> tuple[str, ...]:
    """Channel names of one benchmark renamed to the other's (``chammi->chammi75`` or ``chammi75->chammi``).

    Applies :data:`SYNONYMS` (module docstring); a shared name keeps its name. Raises ``KeyError`` for a
    name outside the source vocabulary or without a counterpart (naming it and the table), ``ValueError``
    when two channels would get the same name.
    """
    if direction not in TRANSLATIONS:
        raise KeyError(f"unknown channel translation {direction!r}; valid: {', '.join(TRANSLATIONS)}")
    src, dst = TRANSLATIONS[direction]
    forward = {s.chammi: s.chammi75 for s in SYNONYMS}
    table = forward if src == "chammi" else {v: k for k, v in forward.items()}
    have, want = VOCABULARIES[src], set(VOCABULARIES[dst])
    out = []
    for name in channels:
        if name not in have:
            raise KeyError(f"{direction}: {name!r} is not a {src} channel name ({', '.join(have)})")
        new = table.get(name, name)
        if new not in want:
            pairs = ", ".join(f"{s.chammi} <-> {s.chammi75}" for s in SYNONYMS)
            raise KeyError(
                f"{direction}: channel {name!r} has no counterpart in {dst} (synonyms: {pairs}; shared names "
                "keep theirs); drop it first, e.g. with chammi_data.augment.transforms.ChannelSubset"
            )
        out.append(new)
    if len(set(out)) != len(out):
        raise ValueError(f"{direction}: channels {list(channels)} would become {out}, naming a channel twice")
    return tuple(out)


def normalisation_stats(
    source: str, channels: Sequence[str] | None = None
) -> tuple[list[float], list[float]]:
    """(mean, std) lists for ``channels`` of CHAMMI ``source`` (default: all of its channels, tile order).

    A variable source (CHAMMI-75) has no fixed statistics: ``KeyError`` saying to normalise per sample.
    """
    if is_variable(source):
        raise KeyError(
            f"source {source} has no fixed per-channel statistics: normalise its images per sample "
            "(Normalize(stats='per_sample'), data.normalisation=per_sample in a training config)"
        )
    info = source_info(source)
    stats = info.stats()
    chans = info.channels if channels is None else to_names(channels)
    missing = [c for c in chans if c not in stats]
    if missing:
        raise KeyError(f"source {info.key} has no channel(s) {missing}; it has {list(info.channels)}")
    return [stats[c][0] for c in chans], [stats[c][1] for c in chans]
