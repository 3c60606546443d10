"""Clinical covariates -> context sentence: the paper's two examples, missing values, formats, YAML errors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctvl.config import load_config, save_config
from ctvl.data.clinical_text import build_clinical_texts, load_clinical_template, render_clinical_text
from ctvl.config import ClinicalTextConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "clinical"
LUNG_ROW = {
    "age": 64,
    "gender": "M",
    "smoking_status": "former",
    "stage": 1,
    "t_stage": "T4",
    "n_stage": "N1",
    "m_stage": "M0",
}
INSPECT_ROW = {
    "age": 61,
    "gender": "F",
    "pe_positive": 1,
    "pe_acute": 1,
    "pe_subsegmentalonly": 0,
    "temperature": 98.6,
    "respiratory_rate": 18,
    "mean_arterial_pressure": 124,
    "pulse": 65,
}


def test_lung_sentence_of_the_paper():
    cfg = load_clinical_template(CONFIGS / "lung.yaml")
    assert render_clinical_text(LUNG_ROW, cfg) == (
        "64 year-old male former smoker lung cancer patient, stage 1, T stage is T4, N stage is N1, M stage is M0."
    )


def test_inspect_sentence_of_the_paper():
    cfg = load_clinical_template(CONFIGS / "inspect.yaml")
    assert render_clinical_text(INSPECT_ROW, cfg) == (
        "A 61-year-old female, acute pulmonary embolism (not limited to subsegmental arteries), temperature 98.6°F, "
        "respiratory rate 18.0 breaths per minute, mean arterial pressure 124.0 mmHg, pulse 65.0 bpm."
    )


def test_rows_from_a_csv_with_pandas_dtypes(tmp_path):
    """Through a CSV, ints become floats (NaN in the column) and booleans strings: same sentence."""
    frame = pd.DataFrame([INSPECT_ROW, {**INSPECT_ROW, "age": None, "pe_acute": None}])
    frame.to_csv(tmp_path / "inspect.csv", index=False)
    texts = build_clinical_texts(
        pd.read_csv(tmp_path / "inspect.csv"), load_clinical_template(CONFIGS / "inspect.yaml")
    )
    assert texts.iloc[0].startswith("A 61-year-old female, acute pulmonary embolism (not limited")
    assert texts.iloc[1].startswith("Female, pulmonary embolism (not limited")
    as_text = pd.read_csv(
        tmp_path / "inspect.csv", dtype=str, keep_default_na=False
    )  # how build-vqa reads tables
    assert (
        build_clinical_texts(as_text, load_clinical_template(CONFIGS / "inspect.yaml")).tolist()
        == texts.tolist()
    )


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA, "", "  ", "NaN", "unknown"])
def test_missing_values_leave_no_trace(missing):
    cfg = load_clinical_template(CONFIGS / "lung.yaml")
    text = render_clinical_text({**LUNG_ROW, "smoking_status": missing, "n_stage": missing}, cfg)
    assert text == "64 year-old male lung cancer patient, stage 1, T stage is T4, M stage is M0."


def test_all_missing_gives_empty_string_and_partial_gives_no_dangling_commas():
    cfg = load_clinical_template(CONFIGS / "inspect.yaml")
    assert render_clinical_text({}, cfg) == ""
    text = render_clinical_text({"pulse": 70.25, "temperature": None, "pe_positive": 0, "pe_acute": 1}, cfg)
    assert text == "No pulmonary embolism, pulse 70.2 bpm."  # pe_acute only described when pe_positive is 1
    assert ", ," not in text and "nan" not in text.lower()


def test_article_fix_and_unit_conversion():
    cfg = ClinicalTextConfig(
        parts=(("A {age}-year-old", "{sex}"), "temperature {temp}"),
        fields={"temp": {"format": ".1f", "unit": "°F", "scale": 1.8, "offset": 32}},
    )
    assert (
        render_clinical_text({"age": 81, "sex": "man", "temp": 37.0}, cfg)
        == "An 81-year-old man, temperature 98.6°F."
    )
    assert render_clinical_text({"age": 18, "sex": "woman"}, cfg) == "An 18-year-old woman."
    assert render_clinical_text({"age": 61, "sex": "man"}, cfg) == "A 61-year-old man."


def test_value_map_keys_match_bools_ints_floats_and_strings():
    cfg = ClinicalTextConfig(parts=("{pe}",), fields={"pe": {"map": {1: "PE", 0: "no PE"}}})
    assert [render_clinical_text({"pe": v}, cfg) for v in (True, 1, 1.0, "1", "yes", False, 0.0)] == [
        "PE."
    ] * 5 + ["No PE."] * 2


def test_shipped_templates_round_trip_through_yaml(tmp_path):
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_clinical_template(path)
        save_config(cfg, tmp_path / path.name)
        assert load_config(ClinicalTextConfig, tmp_path / path.name) == cfg, path.name


def test_synthetic_template_reads_the_synthetic_cohort():
    from ctvl.config import SyntheticCohortConfig
    from ctvl.data.synthetic import make_cohort

    df, _ = make_cohort(SyntheticCohortConfig(n_cases=5, shape=(16, 16, 16)))
    texts = build_clinical_texts(df, load_clinical_template(CONFIGS / "synthetic.yaml"))
    row = df.iloc[0]
    assert texts.iloc[0].startswith(
        f"{row.age} year-old {'male' if row.sex == 'M' else 'female'} {row.smoking} smoker"
    )
    assert texts.iloc[0].endswith(f"M stage is M{row.m_stage}.")


def test_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("parts: ['{age:.1f} years']\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*put formats in `fields`"):
        load_clinical_template(bad)
    bad.write_text("parts: ['{age}']\nfields: {age: {colum: age}}\n")
    with pytest.raises(ValueError, match="colum"):
        load_clinical_template(bad)
    with pytest.raises(ValueError, match=r"columns \['smoking_status'\]"):
        build_clinical_texts(
            pd.DataFrame([{k: v for k, v in LUNG_ROW.items() if k != "smoking_status"}]),
            load_clinical_template(CONFIGS / "lung.yaml"),
        )
