"""``scripts/cv_demo.py``: folds partition the cohort, each fold trains without its validation cases."""

from dataclasses import replace
from pathlib import Path

import pandas as pd

from ctvl.config import CTVLConfig, RunConfig, load_config, save_config
from ctvl.workflows.demo import CONFIGS

from ..conftest import load_script


def test_folds_partition_the_cases():
    cv = load_script("cv_demo")
    manifest = pd.DataFrame({"case_id": [f"c{i}" for i in range(23)], "split": "train"})
    folds = cv.fold_manifests(manifest, 5, seed=0)
    held = [set(f.loc[f["split"] == "validation", "case_id"]) for f in folds]
    assert set().union(*held) == set(manifest["case_id"]) and sum(map(len, held)) == 23
    assert {len(h) for h in held} == {4, 5}
    assert all(set(f["split"]) == {"train", "validation"} for f in folds)


def test_each_fold_pretrains_its_encoder_on_its_training_cases_only(tiny_data, caplog):
    cv = load_script("cv_demo")
    with caplog.at_level("INFO"):
        table = cv.main(["--run", str(tiny_data.root), "--folds", "2", "--steps", "2", "--encoder_epochs", "1",
                         "--name", "test"])
    n_cases = len(pd.read_csv(tiny_data.manifest))
    assert list(table["fold"]) == [0, 1] and table["n_valid"].sum() == n_cases
    assert table[["model", "clinical"]].apply(lambda c: c.between(0, 1)).all().all()
    for k, n_valid in enumerate(table["n_valid"]):
        assert f"{n_cases - n_valid} cases (0 held out)" in caplog.text  # the encoder saw no validation case
        assert (tiny_data.root / "cv" / "test" / f"fold{k}" / "runs" / "stage2" / "model").is_dir()



def test_within_train_never_reads_the_validation_cases(tiny_data, tmp_path):
    cv = load_script("cv_demo")
    stage2 = tmp_path / "stage2_mean_all.yaml"  # another stage-2 setting, to be chosen on these folds
    cfg = load_config(RunConfig, CONFIGS / "train" / "stage2_tiny.yaml")
    save_config(replace(cfg, model=replace(cfg.model, survival=replace(cfg.model.survival, pooling="mean_all"))),
                stage2)
    table = cv.main(["--run", str(tiny_data.root), "--folds", "2", "--steps", "2", "--encoder_epochs", "1",
                     "--name", "within", "--within", "train", "--stage2", str(stage2)])
    manifest = pd.read_csv(tiny_data.manifest, dtype={"case_id": str})
    train_cases = set(manifest.loc[manifest["split"] == "train", "case_id"])
    assert table["n_valid"].sum() == len(train_cases) < len(manifest)
    for k in range(2):
        fold = tiny_data.root / "cv" / "within" / f"fold{k}"
        assert set(pd.read_csv(fold / "manifest.csv", dtype={"case_id": str})["case_id"]) == train_cases
        saved = load_config(CTVLConfig, fold / "runs" / "stage2" / "model" / "config.yaml")
        assert saved.survival.pooling == "mean_all"


def test_runs_that_differ_write_to_different_folders():
    name = load_script("cv_demo").output_name
    names = [name(None, 20, "all", None), name(None, 0, "all", None), name(None, 20, "train", None),
             name(None, 20, "train", Path("stage2_150.yaml")), name(Path("pretrain/encoder.pt"), 20, "all", None)]
    assert names[0] == "per_fold_encoder" and len(set(names)) == len(names)
