"""Every registered benchmark: planted structure scores high, shuffled rows score at chance, a rerun gives the
same numbers, results are written, names and options are checked. One parametrised test over the registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from chammi_data.evaluation.benchmarks import (
    BenchmarkInputError,
    get_benchmark,
    list_benchmarks,
    score,
    write_result,
)
from tests.chammi_data import benchmark_synth as synth

#: (metric, low, high): where a shuffled input must land, the benchmark's chance level with a margin.
CHANCE = {
    "chammi": ("cps", 0.0, 0.45),  # 4 balanced classes: 0.25
    "rbc-mc": ("mean_accuracy", 0.0, 0.3),  # 7 balanced classes: 0.14
    "idr0017": ("auc_roc", 0.2, 0.8),  # 0.5
    "cellphie": ("lr_auc", 0.25, 0.75),  # 0.5
    "jumpcp": ("active_fraction", 0.0, 0.2),  # about the FDR
    "hpav23": ("macro_auc", 0.3, 0.7),  # 0.5
}


@pytest.fixture(scope="module")
def results() -> dict:
    """(planted, shuffled) results of every benchmark, computed once."""
    out = {}
    for name in list_benchmarks():
        features, table, options = synth.make(name)
        out[name] = (
            score(name, features, table, **options),
            score(name, synth.shuffled(features), table, **options),
        )
    return out


def test_registry_names_and_entries() -> None:
    assert list_benchmarks() == ["chammi", "rbc-mc", "idr0017", "cellphie", "jumpcp", "hpav23"]
    sources = {get_benchmark(n).source for n in list_benchmarks()}
    assert sources == {"chammi", "rbc_mc", "idr0017", "cellphie", "jumpcp", "hpav23"}
    for name in list_benchmarks():
        entry = get_benchmark(name)
        assert entry.title and entry.description and entry.headline
        assert entry.defaults, name
        assert name == "chammi" or entry.columns, name
    with pytest.raises(KeyError, match="unknown benchmark 'nope'; valid: chammi, rbc-mc"):
        get_benchmark("nope")


@pytest.mark.parametrize("name", list_benchmarks())
def test_planted_scores_high_and_shuffled_scores_chance(name: str, results: dict) -> None:
    planted, shuffled = results[name]
    assert planted.headline == get_benchmark(name).headline
    assert planted.value > 0.9, planted.metrics
    assert planted.value > shuffled.value + 0.3
    metric, low, high = CHANCE[name]
    assert low <= shuffled.metrics[metric] <= high, (metric, shuffled.metrics)


@pytest.mark.parametrize("name", list_benchmarks())
def test_rerun_gives_identical_numbers(name: str, results: dict) -> None:
    features, table, options = synth.make(name)
    again = score(name, features, table, **options)
    first = results[name][0]
    assert again.metrics.keys() == first.metrics.keys()
    for k, v in first.metrics.items():
        assert (math.isnan(v) and math.isnan(again.metrics[k])) or v == again.metrics[k], k
    for k, frame in first.groups.items():
        pd.testing.assert_frame_equal(frame, again.groups[k])


@pytest.mark.parametrize("name", list_benchmarks())
def test_write_result_creates_folder_json_csv_and_plot(name: str, results: dict, tmp_path) -> None:
    result = results[name][0]
    paths = write_result(result, tmp_path / "new" / name)
    data = json.loads(paths["json"].read_text())
    assert data["benchmark"] == name and data["headline"]["metric"] == result.headline
    assert data["headline"]["value"] == pytest.approx(result.value)
    assert data["options"] and data["versions"]["numpy"] == np.__version__
    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == ["benchmark", "table", "group", "metric", "value"]
    overall = csv[csv["table"] == "overall"].set_index("metric")["value"]
    assert overall[result.headline] == pytest.approx(result.value)
    assert set(csv["table"]) - {"overall"}, "per-group rows are written too"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_option_lists_the_valid_ones() -> None:
    features, table, _ = synth.make("rbc-mc")
    with pytest.raises(
        BenchmarkInputError, match=r"rbc-mc: unknown option\(s\) sede; valid: C, max_iter, seed"
    ):
        score("rbc-mc", features, table, sede=1)


def test_seed_changes_what_it_should(results: dict) -> None:
    """The seeds are real: another copairs null seed moves the p-values, not the mAP itself."""
    features, table, options = synth.make("jumpcp")
    other = score("jumpcp", features, table, **{**options, "seed": 7})
    first = results["jumpcp"][0].groups["activity"]
    again = other.groups["activity"]
    np.testing.assert_allclose(first["mean_average_precision"], again["mean_average_precision"])
    assert not np.allclose(first["p_value"], again["p_value"])
