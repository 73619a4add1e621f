"""The benchmark protocol: hand-computed cases, CPS, agreement with scikit-learn, input forms, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from chammi_data import evaluate
from chammi_data.evaluation.scoring import EvaluationInputError, compute_cps, score
from chammi_data.format.vocab import LOGO_TASKS, SOURCES


def _frame(rows: list[tuple[str, str, str]], tasks: tuple[str, ...], group_col: str) -> pd.DataFrame:
    """(split, label, group) tuples -> an official-style metadata frame."""
    df = pd.DataFrame(rows, columns=["train_test_split", "Label", group_col])
    for t in tasks:
        df[t] = df["train_test_split"] == t
    return df


def synthetic(seed: int = 0, n_train: int = 60, n_task: int = 30, dim: int = 8) -> tuple[dict, dict]:
    """Official-style frames for all three sources + clustered features (3 groups, 4 labels)."""
    rng = np.random.default_rng(seed)
    frames, feats = {}, {}
    for info in SOURCES.values():
        splits = ["Train"] * n_train + [t for t in info.tasks for _ in range(n_task)]
        labels = rng.choice(["a", "b", "c", "d"], len(splits))
        groups = rng.choice(["g0", "g1", "g2"], len(splits))
        frames[info.folder] = _frame(
            list(zip(splits, labels, groups, strict=True)), info.tasks, info.group_column
        )
        centres = {lab: rng.normal(size=dim) for lab in "abcd"}
        feats[info.folder] = np.stack([centres[lab] for lab in labels]) + 1.5 * rng.normal(
            size=(len(splits), dim)
        )
        feats[info.folder] = feats[info.folder].astype(np.float32)
    return feats, frames


def _one_nn(metric: str):
    def make() -> KNeighborsClassifier:
        return KNeighborsClassifier(
            1, algorithm="brute", metric="cosine" if metric == "cosine" else "euclidean"
        )

    return make


def sklearn_protocol(
    feats: dict, frames: dict, metric: str
) -> dict[tuple[str, str], tuple[np.ndarray, float]]:
    """The protocol written the straightforward way with KNeighborsClassifier (one fit per LOGO group)."""
    out = {}
    for folder, df in frames.items():
        info = SOURCES[{"Allen": "wtc11", "HPA": "hpa", "CP": "cp"}[folder]]
        x = feats[folder].astype(np.float64)
        y = df["Label"].to_numpy()
        train = (df["train_test_split"] == "Train").to_numpy()
        for task in info.tasks:
            q = df[task].to_numpy()
            knn = _one_nn(metric)
            if (info.key, task) in LOGO_TASKS:
                g = df[LOGO_TASKS[(info.key, task)]].to_numpy()
                pred = np.empty(q.sum(), dtype=object)
                qg = g[q]
                for name in np.unique(qg):
                    ref = train | (q & (g != name))
                    pred[qg == name] = knn().fit(x[ref], y[ref]).predict(x[q & (g == name)])
            else:
                pred = knn().fit(x[train], y[train]).predict(x[q])
            f1 = f1_score(y[q], pred, labels=np.unique(y[q]), average="macro", zero_division=0)
            out[(folder, task)] = (pred.astype(str), f1)
    return out


# ------------------------------------------------------------------------------------------ hand-computed
def test_ties_and_absent_predicted_class_by_hand() -> None:
    rows = [("Train", "A", "s"), ("Train", "B", "s"), ("Train", "C", "s")]
    rows += [("Task_one", "A", "s"), ("Task_one", "B", "s"), ("Task_one", "A", "s")]
    rows += [("Task_two", "C", "s"), ("Task_two", "B", "s"), ("Task_two", "B", "s")]
    df = _frame(rows, ("Task_one", "Task_two"), "Structure")
    x = np.array(
        [[1, 0], [0, 1], [1, 0], [1, 0.1], [0.1, 1], [1, -0.2], [2, 0], [0, 3], [0.2, 1]], dtype=np.float32
    )
    for metric in ("cosine", "l2"):
        res = evaluate({"Allen": x}, {"Allen": df}, metric=metric, progress=False)
        t = res.table.set_index("task")
        assert t.loc["Task_one", "accuracy"] == 1.0 and t.loc["Task_one", "f1_score_macro"] == 1.0
        # Row 6 ties between Train rows 0 (A) and 2 (C): the lowest index wins -> A, absent from the ground
        # truth.
        assert res.predictions[("Allen", "Task_two")].tolist() == ["A", "B", "B"]
        assert t.loc["Task_two", "accuracy"] == pytest.approx(2 / 3)
        # (F1_B=1 + F1_C=0) / 2; A not averaged
        assert t.loc["Task_two", "f1_score_macro"] == pytest.approx(0.5)
        assert res.cps is None and res.metric == metric


def test_leave_one_group_out_pooling_by_hand() -> None:
    rows = [
        ("Train", "Golgi", "t"),
        ("Train", "Mito", "t"),
        ("Task_one", "Golgi", "t"),
        ("Task_two", "Mito", "t"),
    ]
    rows += [
        ("Task_three", "Cyt", "X"),
        ("Task_three", "ER", "X"),
        ("Task_three", "Cyt", "Y"),
        ("Task_three", "ER", "Y"),
    ]
    df = _frame(rows, SOURCES["hpa"].tasks, "cell_type")
    x = np.array([[1, 0], [0, 1], [1, 0.1], [0.1, 1], [1, 1], [1, 1.01], [1, 1.2], [-1, 0]], dtype=np.float32)
    res = evaluate({"hpa": x}, {"HPA": df}, progress=False)
    # q4 would pick its own group's row 5 (ER) if it were not excluded; q7 falls back to Train (Mito).
    assert res.predictions[("HPA", "Task_three")].tolist() == ["Cyt", "Cyt", "ER", "Mito"]
    pooled = res.table.set_index("task").loc["Task_three"]
    assert pooled["accuracy"] == pytest.approx(0.25) and pooled["n_test"] == 4
    assert pooled["f1_score_macro"] == pytest.approx(0.25)  # Cyt: P=R=1/2; ER: 0 -> pooled, scored once
    groups = res.per_group.set_index("group")
    assert (
        groups.loc["X", "f1_score_macro"] == pytest.approx(1 / 3) and groups.loc["Y", "f1_score_macro"] == 0.0
    )
    assert groups.loc["X", "n_test"] == 2 and set(res.per_group["group_column"]) == {"cell_type"}


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_logo_reference_order_is_train_then_task_rows_in_manifest_order(metric: str) -> None:
    rows = [("Train", "A", "t"), ("Train", "B", "t"), ("Task_one", "A", "t"), ("Task_two", "B", "t")]
    rows += [("Task_three", "C", "X"), ("Task_three", "D", "Y"), ("Task_three", "E", "Z")]
    rows += [("Task_three", "F", "Y"), ("Task_three", "G", "W")]
    df = _frame(rows, SOURCES["hpa"].tasks, "cell_type")
    x = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 1], [0, 1], [1, 1], [1, 1], [1, 1]], dtype=np.float32)
    res = evaluate({"hpa": torch.from_numpy(x)}, {"HPA": df}, metric=metric, progress=False)
    # Rows 4 and 5 tie a Train row and a task row: Train comes first. Rows 6-8 tie two task rows of other
    # groups: the earlier manifest row wins (6 -> 7, 7 -> 6, 8 -> 6).
    assert res.predictions[("HPA", "Task_three")].tolist() == ["B", "B", "F", "E", "E"]


def test_score_averages_only_ground_truth_classes() -> None:
    acc, f1 = score(np.array(["A", "A", "B", "B"]), np.array(["A", "C", "B", "B"]))
    assert acc == 0.75
    assert f1 == pytest.approx((2 / 3 + 1.0) / 2)  # with C averaged in it would be 0.5556


def test_score_equals_sklearn_f1_on_random_labels() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        y_true = rng.choice(list("abcd"), 50)
        y_pred = rng.choice(list("abcdefg"), 50)  # e, f, g never occur in the ground truth
        acc, f1 = score(y_true, y_pred)
        assert acc == pytest.approx(np.mean(y_true == y_pred))
        expected = f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
        assert f1 == pytest.approx(expected, abs=1e-12)


def test_cps_arithmetic() -> None:
    f1 = {("Allen", "Task_two"): 0.6, ("HPA", "Task_two"): 0.3, ("HPA", "Task_three"): 0.6}
    f1 |= {
        ("CP", "Task_two"): 0.9,
        ("CP", "Task_three"): 0.3,
        ("CP", "Task_four"): 0.0,
        ("CP", "Task_one"): 1.0,
    }
    table = pd.DataFrame([{"dataset": d, "task": t, "f1_score_macro": v} for (d, t), v in f1.items()])
    assert compute_cps(table) == pytest.approx(0.6 / 3 + 0.9 / 6 + 1.2 / 9)
    assert compute_cps(table[table["dataset"] != "CP"]) is None


# ----------------------------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_agrees_with_sklearn_protocol(metric: str) -> None:
    feats, frames = synthetic()
    res = evaluate(feats, frames, metric=metric, block_size=500, progress=False)
    expected = sklearn_protocol(feats, frames, metric)
    assert len(res.table) == 9
    for row in res.table.itertuples():
        pred, f1 = expected[(row.dataset, row.task)]
        np.testing.assert_array_equal(res.predictions[(row.dataset, row.task)], pred)
        assert row.f1_score_macro == pytest.approx(f1, abs=1e-12)
    weights = {("Allen", "Task_two"): 1 / 3, ("HPA", "Task_two"): 1 / 6, ("HPA", "Task_three"): 1 / 6}
    weights |= {("CP", t): 1 / 9 for t in ("Task_two", "Task_three", "Task_four")}
    assert res.cps == pytest.approx(sum(w * expected[k][1] for k, w in weights.items()))
    assert set(res.per_group["dataset"]) == {"HPA", "CP"}


def test_manifest_forms_agree() -> None:
    feats, frames = synthetic(seed=1)
    base = evaluate(feats, frames, progress=False)
    key = {"Allen": "wtc11", "HPA": "hpa", "CP": "cp"}
    ours = pd.concat(
        [df.rename(columns={"Label": "label"}).assign(source=key[f]) for f, df in frames.items()]
    )
    merged = pd.concat([df.assign(chunk=f) for f, df in frames.items()])
    text = {f: df.astype(str) for f, df in frames.items()}  # task columns as "True"/"False" strings
    for manifest in (ours.reset_index(drop=True), merged, text):
        other = evaluate({key[f]: v for f, v in feats.items()}, manifest, progress=False)
        pd.testing.assert_frame_equal(other.table, base.table)
        assert other.provenance["protocol_sha256"] == base.provenance["protocol_sha256"]


def test_sgd_runs_and_is_deterministic() -> None:
    feats, frames = synthetic(seed=2)
    a = evaluate(feats, frames, classifier="sgd", progress=False)
    b = evaluate(feats, frames, classifier="sgd", progress=False)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert set(a.table["classifier"]) == {"sgd"} and a.cps is not None
    assert '"classifier": "sgd"' in a.to_json()


# ----------------------------------------------------------------------------------------------- bad input
def _bad(feats: dict, frames: dict, match: str, **kw) -> None:
    with pytest.raises(EvaluationInputError, match=match):
        evaluate(feats, frames, progress=False, **kw)


def test_bad_features_raise_clear_errors() -> None:
    feats, frames = synthetic()
    _bad(
        {**feats, "HPA": feats["HPA"][:-1]},
        frames,
        r"source hpa \(HPA\): features have 149 rows but the manifest has 150",
    )
    nan = feats["CP"].copy()
    nan[[5, 9]] = np.nan
    _bad({**feats, "CP": nan}, frames, r"source cp: features contain NaN or inf in 2 row\(s\): 5, 9")
    inf = feats["CP"].copy()
    inf[3, 0] = np.inf
    _bad({**feats, "CP": inf}, frames, r"NaN or inf in 1 row\(s\): 3")
    zero = feats["Allen"].copy()
    zero[7] = 0
    _bad({**feats, "Allen": zero}, frames, r"source wtc11: zero-norm .* cosine: 1 row\(s\): 7")
    assert evaluate({**feats, "Allen": zero}, frames, metric="l2", progress=False).cps is not None
    _bad({"foo": feats["CP"]}, frames, "unknown source 'foo'")
    _bad({"cp": feats["CP"][:, :0]}, frames, "2-D")
    _bad(feats, {"HPA": frames["HPA"]}, r"features given for source\(s\) \['wtc11', 'cp'\]")
    _bad(feats, frames, "unknown metric", metric="dot")
    _bad(feats, frames, "unknown classifier", classifier="svm")


def test_bad_manifests_raise_clear_errors() -> None:
    feats, frames = synthetic()
    _bad(
        feats,
        {**frames, "CP": frames["CP"].drop(columns="Task_three")},
        r"source cp .*task Task_three: task column",
    )
    _bad(
        feats,
        {**frames, "CP": frames["CP"].drop(columns="Plate")},
        r"task Task_four: grouping column `Plate` is missing",
    )
    _bad(feats, {**frames, "HPA": frames["HPA"].drop(columns="Label")}, "no label column")
    empty = frames["HPA"].copy()
    empty["Task_two"] = False
    _bad(feats, {**frames, "HPA": empty}, r"source hpa \(HPA\), task Task_two: no row is marked True")
    blank = frames["CP"].copy()
    blank.loc[blank["Task_four"].to_numpy().nonzero()[0][:2], "Plate"] = ""
    _bad(
        feats, {**frames, "CP": blank}, r"source cp, task Task_four: grouping column Plate is empty in 2 row"
    )
    notbool = frames["Allen"].copy()
    notbool["Task_one"] = notbool["Task_one"].astype(object)
    notbool.loc[4, "Task_one"] = "maybe"
    _bad(
        feats, {**frames, "Allen": notbool}, r"source wtc11, column Task_one: values 'maybe'.* 1 row\(s\): 4"
    )
    nolabel = frames["Allen"].copy()
    nolabel.loc[2, "Label"] = None
    _bad(feats, {**frames, "Allen": nolabel}, r"empty `Label` in Train/task 1 row\(s\): 2")
    notrain = frames["Allen"].copy()
    notrain["train_test_split"] = notrain["train_test_split"].replace("Train", "Task_one")
    _bad(feats, {**frames, "Allen": notrain}, "no `Train` rows")
    _bad(feats, 42, "unsupported manifest type")
