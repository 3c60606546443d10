"""One reader for per-case CSV / Parquet tables: ids stay strings, errors name the file."""

import numpy as np
import pandas as pd
import pytest

from ctvl.data.tables import read_table, table_format


def test_csv_ids_keep_their_leading_zeros(tmp_path):
    path = tmp_path / "cases.csv"
    path.write_text("case_id,image,age\n007,scans/007.nii.gz,64\n12,scans/12.nii.gz,71\n")
    df = read_table(path)
    assert df["case_id"].tolist() == ["007", "12"] and df["age"].tolist() == [64, 71]


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_integer_ids_come_back_as_strings(tmp_path, suffix):
    path = tmp_path / f"cases{suffix}"
    pd.DataFrame({"case_id": [7, 12], "time": [1.5, np.nan]}).to_parquet(path)
    df = read_table(path)
    assert df["case_id"].tolist() == ["7", "12"]
    assert df["time"].isna().tolist() == [False, True]


def test_missing_ids_stay_missing(tmp_path):
    path = tmp_path / "cases.parquet"
    pd.DataFrame({"case_id": [1.0, np.nan]}).to_parquet(path)
    assert read_table(path)["case_id"].isna().tolist() == [False, True]


def test_errors_name_the_file_and_the_kind(tmp_path):
    with pytest.raises(ValueError, match=r"clinical table .*absent\.csv.* does not exist"):
        read_table(tmp_path / "absent.csv", "clinical table")
    (tmp_path / "cases.tsv").write_text("case_id\n1\n")
    with pytest.raises(ValueError, match=r"cases\.tsv: a manifest must end in \.csv, \.parquet or \.pq"):
        read_table(tmp_path / "cases.tsv", "manifest")


def test_format_given_for_a_file_whose_suffix_does_not_say(tmp_path):
    shard = tmp_path / "predictions.parquet.rank1"
    pd.DataFrame({"case_id": ["a"], "risk": [0.5]}).to_parquet(shard)
    assert read_table(shard, fmt="parquet")["risk"].tolist() == [0.5]
    assert table_format(tmp_path / "x.PQ") == "parquet"
