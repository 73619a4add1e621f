"""The channel registry: CHAMMI's 8 names, CHAMMI-75's 25 types, the synonym table and its translations."""

from __future__ import annotations

import pytest

from chammi_data.format.release_format import format_channels, parse_channels
from chammi_data.format.vocab import (
    CHAMMI75_CHANNELS,
    CHANNEL_COLORS,
    CHANNELS,
    SOURCES,
    SYNONYMS,
    VOCAB,
    VOCABULARIES,
    channel_index,
    is_variable,
    normalisation_stats,
    release_source,
    source_info,
    to_indices,
    to_names,
    translate_channels,
    vocabulary,
    vocabulary_name,
)

#: The 25 types as the issue spells them (copied from its text, not from the module).
ISSUE_TYPES = (
    "KTR, agp, assorted, b, bright-field, cell body, centrosomes, circadian rhythm, cytoskeleton, cytosol, "
    "dark-field, differential interference contrast (DIC), er, g, golgi, membrane, microtubules, "
    "mitochondria, nucleus, phase-contrast, proliferation, protein, r, rna, sub-nuclear"
)


def test_the_registry_holds_both_vocabularies_once_with_chammi_indices_unchanged():
    assert CHAMMI75_CHANNELS == tuple(ISSUE_TYPES.split(", "))
    assert len(CHAMMI75_CHANNELS) == 25 and len(set(CHAMMI75_CHANNELS)) == 25
    assert CHANNELS[:8] == VOCAB and len(CHANNELS) == len(set(CHANNELS)) == 26
    assert set(CHANNELS) == set(VOCAB) | set(CHAMMI75_CHANNELS)
    assert set(CHANNEL_COLORS) == set(CHANNELS)
    assert [channel_index(n) for n in VOCAB] == list(range(8))  # old indices mean what they meant
    assert to_names([5, 21]) == ("nucleus", "mitochondria") and to_indices(["rna", "KTR"]) == (7, 8)
    # names with spaces and parentheses survive the manifest's comma-joined spelling
    names = ("differential interference contrast (DIC)", "cell body", "nucleus")
    assert parse_channels(format_channels(names)) == names


def test_unknown_names_and_vocabularies_give_clear_errors():
    with pytest.raises(KeyError, match=r"unknown channel 'mitochondira' \(did you mean 'mitochondria'\?\)"):
        to_names(["mitochondira"])
    with pytest.raises(KeyError, match="vocabulary of known channels"):
        to_names(["dapi"])
    with pytest.raises(KeyError, match="outside the vocabulary of 26"):
        to_names([26])
    with pytest.raises(ValueError, match="twice"):
        to_names(["agp", 9])
    with pytest.raises(KeyError, match="named vocabularies: chammi, chammi75, all"):
        vocabulary("jump")
    assert vocabulary("chammi") == VOCAB and vocabulary(["r", "g", "b"]) == ("r", "g", "b")
    assert [vocabulary_name(v) for v in VOCABULARIES.values()] == list(VOCABULARIES)
    assert vocabulary_name(("nucleus",)) == "custom"


def test_synonym_table_both_directions():
    assert {(s.chammi, s.chammi75) for s in SYNONYMS} == {("mito", "mitochondria"), ("golgi", "agp")}
    cp = SOURCES["cp"].channels  # nucleus, er, rna, golgi (= Cell Painting AGP), mito
    assert translate_channels(cp, "chammi->chammi75") == ("nucleus", "er", "rna", "agp", "mitochondria")
    for info in SOURCES.values():  # every CHAMMI source can be embedded by a CHAMMI-75 vocabulary model
        assert set(translate_channels(info.channels, "chammi->chammi75")) <= set(CHAMMI75_CHANNELS)
    jump = ("nucleus", "er", "rna", "agp", "mitochondria")
    assert translate_channels(jump, "chammi75->chammi") == cp
    assert translate_channels(("golgi", "nucleus"), "chammi75->chammi") == ("golgi", "nucleus")


def test_translation_refuses_what_it_cannot_rename():
    with pytest.raises(KeyError, match="'bright-field' has no counterpart in chammi"):
        translate_channels(("nucleus", "bright-field"), "chammi75->chammi")
    with pytest.raises(ValueError, match="naming a channel twice"):  # agp and golgi would both be golgi
        translate_channels(("agp", "golgi"), "chammi75->chammi")
    with pytest.raises(KeyError, match="'mito' is not a chammi75 channel name"):
        translate_channels(("mito",), "chammi75->chammi")
    with pytest.raises(KeyError, match="unknown channel translation"):
        translate_channels(("er",), "chammi->jump")


def test_release_sources_and_normalisation():
    assert release_source("chammi75") == "chammi75" and release_source("Allen") == "wtc11"
    assert is_variable("chammi75") and not is_variable("cp")
    with pytest.raises(KeyError, match="unknown source 'jump'"):
        release_source("jump")
    with pytest.raises(KeyError, match="not a CHAMMI benchmark source"):
        source_info("chammi75")
    with pytest.raises(KeyError, match="normalise its images per sample"):
        normalisation_stats("chammi75", ["nucleus"])


def test_the_vocabulary_manifest_agrees_with_the_module():
    import yaml

    from chammi_data.store.paths import manifests_dir

    data = yaml.safe_load((manifests_dir() / "vocabulary.yaml").read_text(encoding="utf-8"))
    assert tuple(data["channels"]) == VOCAB and tuple(data["chammi75_channels"]) == CHAMMI75_CHANNELS
    pairs = [(s["chammi"], s["chammi75"]) for s in data["synonyms"]]
    assert pairs == [(s.chammi, s.chammi75) for s in SYNONYMS]
    for key, info in data["sources"].items():
        assert tuple(info["channels"]) == SOURCES[key].channels
