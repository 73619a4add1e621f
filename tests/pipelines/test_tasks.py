"""Task rules as data: loading, validation, deterministic stratified IID split, OOD rules, unassigned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.steps.tasks import RulesError, assign_tasks, load_rules, rules_digest, summarise

RULES = {
    "version": 1,
    "source": "wtc11",
    "seed": 3,
    "iid_test_fraction": 0.25,
    "train": {"where": {"Structure": ["A", "B"], "label": {"not": ["bad"]}}},
    "tasks": {"Task_one": {"iid": True}, "Task_two": {"where": {"Structure": ["C"]}}},
}


def _table(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "cell_id": [f"wtc11-{i:05d}" for i in range(n)],
            "label": rng.choice(["M0", "M1M2", "M3"], n),
            "Structure": rng.choice(["A", "B", "C", "D"], n),
        }
    )


def test_assign_split_sizes_and_rules() -> None:
    table = _table()
    out = assign_tasks(table, RULES)
    assert list(out["cell_id"]) == list(table["cell_id"])
    pool = table["Structure"].isin(["A", "B"])
    for label, grp in table[pool].groupby("label"):
        got = (out.loc[grp.index, "train_test_split"] == "Task_one").sum()
        assert got == round(0.25 * len(grp)), label  # stratified by label
    assert set(out.loc[pool, "train_test_split"]) == {"Train", "Task_one"}
    assert (out.loc[table["Structure"] == "C", "train_test_split"] == "Task_two").all()
    assert (out.loc[table["Structure"] == "D", "train_test_split"] == "").all()
    assert not out.loc[table["Structure"] == "D", ["Task_one", "Task_two"]].to_numpy().any()
    assert (out["Task_one"] == (out["train_test_split"] == "Task_one")).all()
    assert "(unassigned)" in summarise(out)


def test_assign_is_order_independent_and_seeded() -> None:
    table = _table()
    a = assign_tasks(table, RULES).set_index("cell_id")
    shuffled = table.sample(frac=1.0, random_state=5).reset_index(drop=True)
    b = assign_tasks(shuffled, RULES).set_index("cell_id").loc[a.index]
    pd.testing.assert_frame_equal(a, b)
    other = assign_tasks(table, {**RULES, "seed": 4}).set_index("cell_id")
    assert not (other["train_test_split"] == a["train_test_split"]).all()


def test_bad_rules_and_tables(tmp_path) -> None:
    with pytest.raises(RulesError, match="version"):
        assign_tasks(_table(), {**RULES, "version": 2})
    with pytest.raises(RulesError, match="unknown task 'Task_nine'"):
        assign_tasks(_table(), {**RULES, "tasks": {"Task_nine": {"where": {"label": ["x"]}}}})
    with pytest.raises(KeyError, match="column 'Plate'"):
        assign_tasks(_table(), {**RULES, "train": {"where": {"Plate": ["p"]}}})
    dup = pd.concat([_table(3), _table(3)])
    with pytest.raises(ValueError, match="duplicate cell_id"):
        assign_tasks(dup, RULES)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RULES))
    loaded = load_rules("wtc11", {"tasks": {"wtc11": str(path)}})
    assert rules_digest(loaded) == rules_digest(RULES)
    with pytest.raises(RulesError, match="not 'hpa'"):
        load_rules("hpa", {"tasks": {"hpa": RULES}})


def test_committed_wtc_rules_load() -> None:
    rules = load_rules("wtc11")
    assert rules["tasks"]["Task_one"]["iid"]
    assert abs(rules["iid_test_fraction"] - 12419 / (31060 + 12419)) < 1e-6
