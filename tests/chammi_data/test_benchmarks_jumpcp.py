"""JUMP-CP on real CellProfiler profiles (the committed slice), its two entry points, the equivalence of our
spherize with pycytominer on the reference profiles, and CHAMMI's wrapper giving evaluate's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chammi_data.evaluation.benchmarks import hpav23, idr0017, jumpcp, score
from chammi_data.evaluation.benchmarks.metrics import spherize
from chammi_data.evaluation.scoring import evaluate
from tests.chammi_data import benchmark_synth as synth

REPO = Path(__file__).resolve().parents[2]
SLICE = sorted((REPO / "tests/data/jumpcp").glob("*_slice.csv.gz"))
SHARED = REPO.parent / "shared/data/chammi75-benchmarks/jumpcp/cellprofiler"
OPTIONS = {"null_size": 10_000, "consistency_null_size": 10_000}


@pytest.fixture(scope="module")
def real_slice() -> tuple[np.ndarray, pd.DataFrame]:
    assert len(SLICE) == 2, SLICE
    x, wells, names = jumpcp.load_cellprofiler_profiles([str(p) for p in SLICE])
    assert len(names) == 120 and not [n for n in names if "ZBF" in n or "Brightfield" in n]
    return x, wells


def test_real_slice_gives_stable_numbers(real_slice) -> None:
    x, wells = real_slice
    result = jumpcp.score_wells(x, wells, **OPTIONS)
    m = result.metrics
    # 81 compounds (74 + 7 positive controls) with a replicate on the other plate; 62 pass FDR 0.05.
    assert (m["compounds"], m["active_compounds"], m["consistency_targets"]) == (81, 62, 37)
    assert m["active_fraction"] == pytest.approx(62 / 81)
    assert m["map_mean"] == pytest.approx(0.8354437058140762, rel=1e-6)
    assert m["consistency_map_mean"] == pytest.approx(0.08944850729306551, rel=1e-6)
    assert result.n == {
        "wells": 192,
        "negcon_wells": 30,
        "features": 120,
        "features_dropped_constant_in_controls": 0,
        "conditions": 1,
    }
    assert result.groups["conditions"]["condition"].tolist() == ["U2OS_48h"]


def test_cells_aggregate_to_the_same_result_as_their_well_profiles(real_slice) -> None:
    """score (cells) = mean per well, then exactly score_wells: the shared path after aggregation."""
    x, wells = real_slice
    rng = np.random.default_rng(0)
    reps = rng.integers(2, 5, len(wells))
    noise = [rng.normal(size=(r, x.shape[1])) for r in reps]
    cells = np.concatenate([x[i] + n - n.mean(axis=0) for i, n in enumerate(noise)])  # well means = x
    table = wells.loc[np.repeat(np.arange(len(wells)), reps)].reset_index(drop=True)
    order = rng.permutation(len(cells))  # cell order must not matter
    got = jumpcp.score(cells[order], table.iloc[order].reset_index(drop=True), **OPTIONS)
    want = jumpcp.score_wells(x, wells, **OPTIONS)
    for k, v in want.metrics.items():
        assert got.metrics[k] == pytest.approx(v, rel=1e-9, nan_ok=True), k
    assert got.n["cells"] == len(cells)


def test_dmso_spelled_as_dmso_equals_empty(real_slice) -> None:
    x, wells = real_slice
    spelled = wells.assign(
        broad_sample=wells["broad_sample"].where(wells["control_type"] != "negcon", "DMSO")
    )
    a = jumpcp.score_wells(x, wells, **OPTIONS)
    b = jumpcp.score_wells(x, spelled, **OPTIONS)
    assert a.metrics == b.metrics


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs shared/data/chammi75-benchmarks beside the checkout")
def test_spherize_matches_pycytominer_on_the_reference_profiles() -> None:
    pycytominer = pytest.importorskip("pycytominer.operations")
    x, wells, names = jumpcp.load_cellprofiler_profiles([str(p) for p in sorted(SHARED.glob("*.csv.gz"))])
    assert x.shape == (2688, 602)
    neg = (wells["control_type"] == "negcon").to_numpy()
    ref = pycytominer.Spherize(epsilon=1e-3, center=True, method="ZCA-cor").fit(
        pd.DataFrame(x[neg], columns=names)
    )
    expected = ref.transform(pd.DataFrame(x, columns=names)).to_numpy()
    ours, keep = spherize(x, neg, 1e-3)
    assert keep.all()
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_chammi_is_evaluate_with_identical_numbers() -> None:
    features, frames, options = synth.make("chammi")
    result = score("chammi", features, frames, metric="l2", **options)
    ref = evaluate(features, frames, metric="l2", progress=False)
    assert result.value == ref.cps
    for row in ref.table.itertuples():
        assert result.metrics[f"{row.dataset}_{row.task}_f1"] == row.f1_score_macro
    pd.testing.assert_frame_equal(result.groups["per_group"], ref.per_group)


def test_idr0017_late_fusion_and_parental_lines_outside_the_average() -> None:
    features, table, _ = synth.make("idr0017")
    late = score("idr0017", features, table, fusion="late")
    lines = late.groups["cell_lines"]
    assert lines["parental"].tolist() == [False, False, True]  # sorted: 02-004, 104-007, PAR001
    assert late.metrics["auc_roc"] == pytest.approx(lines.loc[~lines["parental"], "auc_roc"].mean())
    assert late.value > 0.9
    assert late.options["compound_match_column"] == "matched_drug_name"


def test_hpav23_category_sets() -> None:
    assert len(hpav23.category_names("challenge")) == 19
    names = hpav23.category_names("all")
    assert len(names) == 31 and names[-1] == "Negative" and "Rods & Rings" not in names
    split = hpav23.antibody_split()
    assert [sum(v == s for v in split.values()) for s in ("train", "valid", "test")] == [10433, 1487, 3460]
    assert idr0017.load_ground_truth().shape == (194, 12)
