"""ctvl synth-tabular fit -> sample -> report end to end on GBSG2 (a short fit), and the report's bad-input paths."""

import json

import pandas as pd
import pytest

from ctvl.cli import main
from ctvl.config import SynthTabularRunConfig, load_config

QUICK = ["--synth.epochs", "30", "--synth.hidden", "[32]", "--synth.latent_dim", "8"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["--log_level", "WARNING", "synth-tabular", "fit", "--tabular.dataset", "gbsg2", *QUICK,
                 "--out", str(root / "fit")]) == 0
    for mode in ("generate", "copy"):
        assert main(["--log_level", "WARNING", "synth-tabular", "sample", "--model", str(root / "fit" / "model"),
                     "--sample.outcome", mode, "--sample.n", "400", "--out", str(root / f"{mode}.csv")]) == 0
    return root


def test_fit_writes_the_generator_the_split_and_its_config(run):
    fit = run / "fit"
    m = json.loads((fit / "metrics.json").read_text())
    assert m["n_train"] + m["n_holdout"] == 686
    assert m["training"]["loss_after"]["distillation"] < m["training"]["loss_before"]["distillation"]
    assert m["holdout_c_index"]["student"] > 0.6  # CoxPH is about 0.66 on this split
    assert len(pd.read_parquet(fit / "real_train.parquet")) == m["n_train"]
    assert load_config(SynthTabularRunConfig, fit / "run_config.yaml").synth.epochs == 30
    assert {p.name for p in (fit / "model").iterdir()} == {"generator.json", "networks.safetensors",
                                                          "records.safetensors"}


def test_sampled_table_has_the_real_columns(run):
    real = pd.read_parquet(run / "fit" / "real_train.parquet")
    synthetic = pd.read_csv(run / "generate.csv")
    assert list(synthetic.columns) == list(real.columns) and len(synthetic) == 400
    assert set(synthetic["tgrade"]) <= {"I", "II", "III"} and synthetic["age"].between(21, 80).all()


def test_report_compares_tables_and_lists_bad_ones(run, tmp_path):
    good = pd.read_csv(run / "generate.csv")
    good.drop(columns=["tsize"]).to_csv(tmp_path / "no_tsize.csv", index=False)
    good.assign(tgrade=["IV"] * 3 + list(good["tgrade"][3:])).to_csv(tmp_path / "grade_iv.csv", index=False)
    out = tmp_path / "report"
    assert main(["--log_level", "ERROR", "synth-tabular", "report", "--real", str(run / "fit" / "real_train.parquet"),
                 "--holdout", str(run / "fit" / "real_holdout.parquet"), "--synthetic", str(run / "generate.csv"),
                 str(run / "copy.csv"), str(tmp_path / "no_tsize.csv"), str(tmp_path / "grade_iv.csv"),
                 "--report.baselines", "[copula, bootstrap]", "--report.bootstrap", "20", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["tables"]) == ["generate", "copy", "copula", "bootstrap"]
    errors = {e["file"].rsplit("/", 1)[-1]: e["error"] for e in m["errors"]}
    assert "missing ['tsize']" in errors["no_tsize.csv"]
    assert "'tgrade'" in errors["grade_iv.csv"] and "data rows 1, 2, 3" in errors["grade_iv.csv"]
    generated, boot = m["tables"]["generate"], m["tables"]["bootstrap"]
    assert generated["privacy"]["exact_copies"] == 0 and boot["privacy"]["exact_copies"] > 0.5
    assert generated["hazard_ratios"]["sign_agreement_significant"] == 1.0
    assert generated["utility"]["coxph"]["tstr"]["c_index"] > 0.6
    for name in ("report.html", "marginals.png", "correlations.png", "hazard_ratios.png", "kaplan_meier.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "membership AUC" in (out / "report.html").read_text()


def test_bad_inputs_fail_with_a_clear_message(run, tmp_path, caplog):
    assert main(["synth-tabular", "sample", "--model", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
    assert "generator.json" in caplog.text
    bad = pd.read_parquet(run / "fit" / "real_train.parquet").assign(time=-1.0)
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["synth-tabular", "fit", "--tabular.table", str(tmp_path / "bad.csv"), *QUICK,
                 "--out", str(tmp_path / "fit")]) == 2
    assert "negative times" in caplog.text and "bad.csv" in caplog.text
