"""Every bad input gets one clear one-line BenchmarkInputError, raised before any computation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from chammi_data.evaluation.benchmarks import BenchmarkInputError, score
from tests.chammi_data import benchmark_synth as synth


def _nan(x: np.ndarray, row: int = 3) -> np.ndarray:
    x = np.array(x, dtype=float)
    x[row, 1] = np.nan
    return x


def _set(column: str, row: int, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(t: pd.DataFrame) -> pd.DataFrame:
        t = t.copy()
        t[column] = t[column].astype(object)
        t.loc[row, column] = value
        return t

    return edit


def _drop_col(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda t: t.drop(columns=[column])


#: (benchmark, feature edit, table edit, expected message)
CASES = [
    # shared checks, each benchmark
    *[
        (n, lambda x: x[:-1], None, r"features have \d+ rows but the table has \d+")
        for n in ("rbc-mc", "idr0017", "cellphie", "jumpcp", "hpav23")
    ],
    *[
        (n, lambda x: x[:, :, None], None, r"features must be 2-D \(N, D\)")
        for n in ("rbc-mc", "idr0017", "cellphie", "jumpcp", "hpav23")
    ],
    *[
        (n, _nan, None, r"features hold NaN or inf values in 1 row\(s\): 3")
        for n in ("idr0017", "cellphie", "jumpcp", "hpav23")
    ],
    (
        "rbc-mc",
        lambda x: np.where(np.arange(len(x))[:, None] == 2, np.inf, x),
        None,
        r"hold inf values in 1 row",
    ),
    ("rbc-mc", None, _drop_col("site"), r"table lacks column\(s\) site; required: site, label"),
    ("rbc-mc", None, _set("site", 5, "French"), r"column site row 5 has 'French'; allowed: Canadian, Swiss"),
    (
        "rbc-mc",
        None,
        _set("label", 7, "Undecidable"),
        r"row 7 has label Undecidable; the protocol excludes it",
    ),
    (
        "rbc-mc",
        None,
        lambda t: t.assign(
            label=t["label"].where(~((t.site == "Swiss") & (t.label == "Side")), "SmoothDisc")
        ),
        r"site Swiss has no sample of class\(es\) Side",
    ),
    (
        "idr0017",
        None,
        lambda t: t.assign(cell_line=t["cell_line"].replace("HCT116-02-004", "HCT116-XYZ")),
        r"cell line HCT116-XYZ is not a column of ground_truth",
    ),
    ("idr0017", None, _set("compound", 0, "other"), r"rows of plate/image_id .* disagree on compound"),
    (
        "idr0017",
        None,
        lambda t: t.assign(control=t["control"].map({True: "yes", False: "maybe"})),
        r"column control row 24: .maybe. is not a boolean",
    ),
    ("idr0017", None, _drop_col("compound"), r"table lacks column\(s\) compound"),
    (
        "idr0017",
        None,
        lambda t: t.assign(compound=t["compound"].where(t["control"], None)),
        r"column compound is empty for treated row \d+",
    ),
    ("cellphie", None, lambda t: t.assign(time="D7"), r"no row has time 'D28' \(times present: D7\)"),
    (
        "cellphie",
        None,
        lambda t: t.assign(gene=t["gene"].replace("non-target", "AAVS1")),
        r"the train split at time D28 has no non-target cell",
    ),
    ("cellphie", None, _drop_col("umi"), r"table lacks column\(s\) umi"),
    (
        "jumpcp",
        None,
        lambda t: t.assign(plate=t["plate"].replace("BR00117012", "BR99999999")),
        r"plate BR99999999 is not in experiment-metadata.tsv; give the table a condition column",
    ),
    (
        "jumpcp",
        None,
        lambda t: t.assign(control_type=t["control_type"].where(t["plate"] != "BR00117011", None)),
        r"well BR00117011/A00 has broad_sample '' but control_type ''; DMSO wells need control_type negcon",
    ),
    (
        "jumpcp",
        None,
        _set("broad_sample", 0, "BRD-X"),
        r"rows of plate/well \('BR00117010', 'A00'\) disagree",
    ),
    ("jumpcp", None, _drop_col("pert_type"), r"table lacks column\(s\) pert_type"),
    ("hpav23", None, _set("locations", 2, "Nucleoplasm|Moon"), r"row 2 has unknown location 'Moon'"),
    ("hpav23", None, lambda t: t.assign(antibody="HPA_NOT_LISTED"), r"no cell of a train antibody"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}:{c[3][:40]}")
def test_bad_input_raises_one_line_error(case) -> None:
    name, edit_x, edit_t, message = case
    features, table, options = synth.make(name)
    if edit_x is not None:
        features = edit_x(features)
    if edit_t is not None:
        table = edit_t(table)
    with pytest.raises(BenchmarkInputError, match=message) as info:
        score(name, features, table, **options)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{name}: ")


def test_rbc_mc_sets_nan_to_zero_as_published() -> None:
    features, table, _ = synth.make("rbc-mc")
    with_nan = _nan(features)
    zeroed = np.array(with_nan)
    zeroed[3, 1] = 0.0
    a, b = score("rbc-mc", with_nan, table), score("rbc-mc", zeroed, table)
    assert a.metrics == b.metrics
    assert a.n["rows_with_nan_set_to_0"] == 1


def test_jumpcp_plate_without_dmso_and_table_type() -> None:
    features, table, options = synth.make("jumpcp")
    keep = ~((table["plate"] == "BR00117011") & (table["control_type"] == "negcon")).to_numpy()
    with pytest.raises(BenchmarkInputError, match=r"plate BR00117011 has 0 negcon \(DMSO\) well\(s\)"):
        score("jumpcp", features[keep], table[keep].reset_index(drop=True), **options)
    with pytest.raises(BenchmarkInputError, match="table must be a pandas DataFrame"):
        score("jumpcp", features, table.to_dict(), **options)


def test_idr0017_line_without_hits_and_unknown_fusion() -> None:
    features, table, _ = synth.make("idr0017")
    with pytest.raises(BenchmarkInputError, match=r"unknown fusion 'middle'; valid: early, late"):
        score("idr0017", features, table, fusion="middle")
    few = table["control"].to_numpy() | (table["compound"] == table["compound"].dropna().iloc[0]).to_numpy()
    with pytest.raises(BenchmarkInputError, match=r"ranking metrics need both hits and non-hits"):
        score("idr0017", features[few], table[few].reset_index(drop=True))


def test_chammi_wraps_evaluation_errors() -> None:
    features, frames, options = synth.make("chammi")
    features["HPA"] = features["HPA"][:-1]
    with pytest.raises(BenchmarkInputError, match=r"^chammi: source hpa \(HPA\): features have"):
        score("chammi", features, frames, **options)
    with pytest.raises(BenchmarkInputError, match=r"features must be a dict"):
        score("chammi", np.zeros((3, 2)), frames)


def test_cellphie_channel_slices_must_divide_the_features() -> None:
    features, table, options = synth.make("cellphie")
    with pytest.raises(BenchmarkInputError, match=r"features of length 84 do not split into 5 equal channel"):
        score("cellphie", features, table, **{**options, "channel_slices": 5})
