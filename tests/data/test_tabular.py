"""Survival tables, the invertible covariate encoder and event-stratified splits (ctvl.data.tabular).

The bundled data sets come from scikit-survival (offline; tests that need them skip without it); sizes and
event counts are those of ``/work/shared/ANCHORS.md``.
"""

from __future__ import annotations

import json
import logging
import typing

import numpy as np
import pandas as pd
import pytest
import yaml

from ctvl.config import TabularConfig
from ctvl.data.tabular import (
    BUNDLED_DATASETS,
    SurvivalTable,
    TabularEncoder,
    build_encoder,
    build_survival_table,
    load_bundled_dataset,
    load_reference_dataset,
    load_survival_table,
    split_table,
)

SIZES = {"gbsg2": (686, 299), "whas500": (500, 215), "aids": (1151, 96), "flchain": (7874, 2169),
         "veterans": (137, 128)}


@pytest.fixture(scope="module")
def bundled():
    pytest.importorskip("sksurv")  # the bundled sets ship with the optional scikit-survival
    tables = {name: load_bundled_dataset(name) for name in BUNDLED_DATASETS}
    tables["flchain+chapter"] = load_bundled_dataset("flchain", drop_leaks=False)
    return tables


def mixed_frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Every column kind and dtype the encoder restores, with missing cells."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.normal(60, 10, n),
        "nodes": rng.integers(0, 30, n),  # int64
        "visits": pd.array(rng.integers(0, 5, n), dtype="Int64"),  # nullable, with NA below
        "smoker": rng.random(n) < 0.3,  # bool
        "female": rng.integers(0, 2, n),  # 0/1 int64
        "site": rng.choice(["lung", "liver", "bone"], n).astype(object),  # text
        "stage": pd.Categorical(rng.choice(["I", "II", "III"], n), ordered=True),
        "grade": pd.Categorical(rng.choice([1, 2, 3], n)),  # integer levels
        "creat": rng.lognormal(0, 0.3, n),
    })
    frame.loc[[1, 5], "visits"] = pd.NA
    frame.loc[[2, 7, 9], "creat"] = np.nan
    frame.loc[[3], "site"] = np.nan  # missing text comes back as NaN (not None)
    frame.loc[[4, 8], "stage"] = np.nan
    frame.loc[[6], "age"] = np.nan
    return frame


# ------------------------------------------------------------------------------------ bundled data


@pytest.mark.parametrize("name", BUNDLED_DATASETS)
def test_bundled_datasets_load_as_survival_tables(bundled, name):
    table = bundled[name]
    n, n_events = SIZES[name]
    assert len(table) == n and int(table.event.sum()) == n_events
    assert table.time.dtype == np.float64 and table.event.dtype == bool and table.case_id.shape == (n,)
    assert (table.time >= 0).all() and table.source == f"scikit-survival:{name}"
    kinds = table.kinds
    for column in table.covariates.columns:
        is_category = isinstance(table.covariates[column].dtype, pd.CategoricalDtype)
        assert is_category == (kinds[column] == "categorical"), column
    y = table.to_structured()
    assert y.dtype.names == ("event", "time") and np.array_equal(y["time"], table.time)


def test_flchain_leak_zero_times_and_aids_endpoint(bundled, caplog):
    assert "chapter" not in bundled["flchain"].covariates
    assert "chapter" in bundled["flchain+chapter"].covariates
    assert bundled["flchain"].n_zero_times == 3
    assert int(bundled["flchain"].covariates.isna().sum().sum()) == 1350
    assert int(bundled["flchain+chapter"].covariates.isna().sum().sum()) == 7055  # as ANCHORS.md counts
    death = load_bundled_dataset("aids", endpoint="death")
    assert len(death) == 1151 and int(death.event.sum()) != 96
    with pytest.raises(ValueError, match="endpoint"):
        load_bundled_dataset("gbsg2", endpoint="death")
    with pytest.raises(ValueError, match="unknown bundled data set"):
        load_bundled_dataset("metabric")
    with caplog.at_level(logging.INFO, logger="ctvl.data.tabular"):
        load_bundled_dataset("flchain")
    assert "3 row(s) with time 0" in caplog.text


# ------------------------------------------------------------------------------------ encoder


@pytest.mark.parametrize("name", [*BUNDLED_DATASETS, "flchain+chapter"])
@pytest.mark.parametrize("options", [{"missing_indicators": True},
                                     {"missing_indicators": True, "drop_first": True},
                                     {"missing_indicators": True, "categorical": "ordinal"},
                                     {"impute": False}], ids=["onehot", "drop_first", "ordinal", "no_impute"])
def test_round_trip_restores_bundled_tables(bundled, name, options):
    covariates = bundled[name].covariates
    encoder = TabularEncoder(**options).fit(covariates)
    X = encoder.transform(covariates)
    assert X.dtype == np.float64 and X.shape == (len(covariates), len(encoder.feature_names_))
    numeric_holes = int(covariates.select_dtypes("number").isna().sum().sum())
    assert np.isnan(X).sum() == (0 if options.get("impute", True) else numeric_holes)
    back = encoder.inverse_transform(X)
    pd.testing.assert_frame_equal(back, covariates, check_exact=False, rtol=1e-12)  # dtypes, categories, NaN


def test_missing_cells_counted_imputed_and_own_level(bundled):
    covariates = bundled["flchain+chapter"].covariates
    encoder = TabularEncoder().fit(covariates)
    assert encoder.missing_counts["creatinine"] == 1350 and encoder.missing_counts["chapter"] == 5705
    assert encoder.missing_counts["age"] == 0
    names = encoder.feature_names_
    assert "chapter=<missing>" in names and "creatinine=<missing>" not in names  # no indicators asked for
    X = encoder.transform(covariates)
    holes = covariates["creatinine"].isna().to_numpy()
    back = encoder.inverse_transform(X)
    assert (back.loc[holes, "creatinine"] == covariates["creatinine"].median()).all()  # the training median
    assert back["chapter"].isna().sum() == 5705  # missing is a level: it comes back as NaN
    with_indicator = TabularEncoder(missing_indicators=True).fit(covariates)
    column = with_indicator.feature_names_.index("creatinine=<missing>")
    assert np.array_equal(with_indicator.transform(covariates)[:, column], holes.astype(float))


def test_mixed_dtypes_round_trip_exactly_and_noise_is_rounded():
    frame = mixed_frame()
    encoder = TabularEncoder(missing_indicators=True).fit(frame)
    kinds = {spec["name"]: spec["kind"] for spec in encoder.to_dict()["columns"]}
    assert kinds == {"age": "numeric", "nodes": "integer", "visits": "integer", "smoker": "binary",
                     "female": "binary", "site": "categorical", "stage": "categorical",
                     "grade": "categorical", "creat": "numeric"}
    X = encoder.transform(frame)
    back = encoder.inverse_transform(X)
    pd.testing.assert_frame_equal(back, frame, check_exact=False, rtol=1e-12)
    assert str(back["nodes"].dtype) == "int64" and str(back["visits"].dtype) == "Int64"
    assert back["stage"].cat.ordered and encoder.feature_names_.count("stage") == 1  # ordered: ordinal
    noisy = encoder.inverse_transform(X + np.random.default_rng(1).normal(0, 0.01, X.shape))
    assert noisy["nodes"].equals(frame["nodes"]) and noisy["site"].equals(frame["site"])  # rounded, argmax
    assert noisy["smoker"].equals(frame["smoker"]) and noisy["grade"].equals(frame["grade"])


def test_encoder_layout_and_standardisation():
    frame = mixed_frame()
    encoder = TabularEncoder(drop_first=True).fit(frame)
    names = encoder.feature_names_
    assert names[:2] == ["age", "nodes"] and "site=bone" not in names and "site=liver" in names
    assert "site=<missing>" in names and "grade=2" in names
    X = encoder.transform(frame)
    nodes = X[:, names.index("nodes")]
    assert abs(nodes.mean()) < 1e-12 and nodes.std() == pytest.approx(1.0)
    assert set(np.unique(X[:, names.index("female")])) <= {0.0, 1.0}
    onehot = TabularEncoder(categorical="onehot").fit(frame)
    assert {"stage=I", "stage=II", "stage=III", "stage=<missing>"} <= set(onehot.feature_names_)


def test_state_is_plain_json_and_yaml(tmp_path):
    frame = mixed_frame()
    encoder = TabularEncoder(missing_indicators=True, drop_first=True).fit(frame)
    state = encoder.to_dict()
    assert json.loads(json.dumps(state)) == state
    assert yaml.safe_load(yaml.safe_dump(state)) == state
    again = TabularEncoder.from_dict(state)
    assert again.to_dict() == state and again.feature_names_ == encoder.feature_names_
    np.testing.assert_array_equal(again.transform(frame), encoder.transform(frame))
    loaded = TabularEncoder.load(encoder.save(tmp_path / "encoder.json"))
    assert loaded.to_dict() == state
    pd.testing.assert_frame_equal(loaded.inverse_transform(loaded.transform(frame)),
                                  encoder.inverse_transform(encoder.transform(frame)))
    with pytest.raises(ValueError, match="not a ctvl.TabularEncoder"):
        TabularEncoder.from_dict({"format": "pickle"})


def test_encoder_errors():
    frame = mixed_frame()
    encoder = TabularEncoder().fit(frame)
    with pytest.raises(ValueError, match="unseen at fit"):
        encoder.transform(frame.assign(site=["kidney"] * len(frame)))
    with pytest.raises(ValueError, match=r"\['age'\] are missing"):
        encoder.transform(frame.drop(columns="age"))
    with pytest.raises(ValueError, match="inverse_transform needs shape"):
        encoder.inverse_transform(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        TabularEncoder().transform(frame)
    with pytest.raises(ValueError, match="no observed value"):
        TabularEncoder().fit(frame.assign(age=np.nan))
    with pytest.raises(ValueError, match="categorical"):
        TabularEncoder(categorical="dummy")
    with pytest.raises(ValueError, match="binary"):
        TabularEncoder().fit(frame).transform(frame.assign(female=2))


# ------------------------------------------------------------------------------------ files


def write_csv(tmp_path, text: str, name: str = "cohort.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_and_parquet_tables_load(tmp_path, caplog):
    path = write_csv(tmp_path, "case_id,futime,death,age,stage,note\n"
                               "007,0,1,61,2,a\n012,3.5,0,70,1,b\n013,4,True,55,3,a\n014,8,False,48,2,b\n")
    with caplog.at_level(logging.INFO, logger="ctvl.data.tabular"):
        table = load_survival_table(path, time="futime", event="death", categorical=("stage",),
                                    drop=("note",))
    assert "1 row(s) with time 0" in caplog.text
    assert table.case_id.tolist() == ["007", "012", "013", "014"]
    assert table.event.tolist() == [True, False, True, False] and table.time.tolist() == [0.0, 3.5, 4.0, 8.0]
    assert list(table.covariates.columns) == ["age", "stage"] and table.kinds == {"age": "integer",
                                                                                   "stage": "categorical"}
    parquet = tmp_path / "cohort.parquet"
    pd.DataFrame({"time": [1.0, 2.0], "event": [True, False], "x": [0.5, 0.25]}).to_parquet(parquet)
    loaded = load_survival_table(parquet)
    assert loaded.case_id.tolist() == ["0", "1"] and loaded.event.tolist() == [True, False]
    encoder = TabularEncoder().fit(table.covariates)
    back = encoder.inverse_transform(encoder.transform(table.covariates))
    pd.testing.assert_frame_equal(back, table.covariates)


BAD_TABLES = [
    ("time,event,x\n1,1,0\n", {"time": "t"}, "no time column 't'"),
    ("time,event,x\n1,1,0\n", {"event": "status"}, "no event column 'status'"),
    ("time,event,x\n", {}, "has no data rows"),
    ("time,event,x\n1,1,0\n2,0,1\nabc,1,0\n", {}, r"time column 'time' has non-numeric times in data row 3 "
                                                   r"\(values 'abc'\)"),
    ("time,event,x\n1,1,0\n-2,0,1\n3,1,0\n-4,1,1\n", {}, "negative times in data rows 2, 4"),
    ("time,event,x\n1,1,0\n,0,1\n", {}, "missing times in data row 2"),
    ("time,event,x\n1,1,0\ninf,0,1\n", {}, "infinite times in data row 2"),
    ("time,event,x\n1,1,0\n2,2,1\n3,yes,0\n", {}, r"event column 'event' must hold 0/1 or True/False; "
                                                   r"found other values in data rows 2, 3"),
    ("time,event,x\n1,1,0\n2,0.5,1\n", {}, "found other values in data row 2"),
    ("time,event,x\n1,1,0\n2,,1\n", {}, "found other values in data row 2"),
    ("case_id,time,event\na,1,1\nb,2,0\na,3,1\n", {}, "repeats ids in data rows 1, 3"),
    ("time,event,x\n1,1,0\n", {"drop": ("y",)}, r"`drop` names columns that do not exist: \['y'\]"),
    ("time,event,x\n1,1,0\n", {"categorical": ("y",)}, "`categorical` names columns"),
]


@pytest.mark.parametrize("text,kwargs,message", BAD_TABLES)
def test_bad_tables_name_file_column_and_rows(tmp_path, text, kwargs, message):
    path = write_csv(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        load_survival_table(path, **kwargs)
    assert "cohort.csv" in str(info.value)


def test_bad_table_paths(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_survival_table(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match=r"\.csv, \.parquet or \.pq"):
        load_survival_table(tmp_path / "table.xlsx")


# ------------------------------------------------------------------------------------ splits


@pytest.mark.parametrize("validation_fraction", [0.0, 0.15])
def test_splits_are_seeded_disjoint_and_event_stratified(bundled, validation_fraction):
    table = bundled["whas500"]
    split = split_table(table, test_fraction=0.2, seed=3, validation_fraction=validation_fraction)
    again = split_table(table, test_fraction=0.2, seed=3, validation_fraction=validation_fraction)
    other = split_table(table, test_fraction=0.2, seed=4, validation_fraction=validation_fraction)
    assert all(np.array_equal(a, b) for a, b in zip(split, again))
    assert not np.array_equal(split.test, other.test)
    everything = np.concatenate(split)
    assert np.array_equal(np.sort(everything), np.arange(len(table)))  # disjoint and complete
    assert len(split.test) == 100 and len(split.validation) == round(500 * validation_fraction)
    rate = table.event.mean()
    for part in split:
        if len(part):
            assert abs(table.event[part].sum() - rate * len(part)) <= 1  # stratified to one patient
    sub = table.subset(split.test)
    assert isinstance(sub, SurvivalTable) and len(sub) == 100
    assert np.array_equal(sub.time, table.time[split.test])
    assert sub.covariates.index.equals(pd.RangeIndex(100))
    assert np.array_equal(split_table(table.event, 0.2, 3, validation_fraction).test, split.test)


def test_split_arguments_are_checked():
    event = np.array([True, False] * 10)
    with pytest.raises(ValueError, match="sum < 1"):
        split_table(event, test_fraction=0.6, validation_fraction=0.5)
    with pytest.raises(ValueError, match=">= 2 events"):
        split_table(np.array([True] + [False] * 9))
    assert split_table(event, test_fraction=0.0).test.size == 0


# ------------------------------------------------------------------------------------ config, baselines


def test_config_builds_tables(tmp_path, bundled):
    names = typing.get_args(typing.get_type_hints(TabularConfig)["dataset"])
    assert set(names) == {"", *BUNDLED_DATASETS}
    table = build_survival_table(TabularConfig(dataset="gbsg2", drop=("age",)))
    assert len(table) == 686 and "age" not in table.covariates
    path = write_csv(tmp_path, "pid,t,e,x\np1,1,1,3\np2,2,0,4\n")
    table = build_survival_table(TabularConfig(table=str(path), time="t", event="e", id_column="pid",
                                               categorical=("x",)))
    assert table.case_id.tolist() == ["p1", "p2"] and table.kinds == {"x": "categorical"}
    with pytest.raises(ValueError, match="exactly one"):
        build_survival_table(TabularConfig())
    with pytest.raises(ValueError, match="got both"):
        TabularConfig(table="a.csv", dataset="gbsg2")
    with pytest.raises(ValueError, match="test_fraction"):
        TabularConfig(test_fraction=1.0)
    encoder = build_encoder(TabularConfig(encoding="onehot", missing_indicators=True))
    assert encoder.categorical == "onehot" and encoder.missing_indicators


def test_reference_matrices_for_the_baselines(bundled):
    X, event, time, names = load_reference_dataset("gbsg2")
    assert X.shape == (686, 9) and event.sum() == 299 and len(names) == 9
    assert "horTh=yes" in names and "horTh=no" not in names  # first level dropped
    X, event, time, names = load_reference_dataset("flchain")
    assert np.isnan(X).sum() == 1350 and not any(n.startswith("chapter") for n in names)
