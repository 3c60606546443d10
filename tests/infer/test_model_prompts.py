"""A trained model carries its prompts: predict/generate rebuild the training prompts without being told.

Before ``prompts.yaml``, ``ctvl predict --model runs/stage2/model --inputs manifest.csv`` (the README's
command) silently dropped the clinical sentence the model was trained with (stage 2's run config has no
template), and the demo's validation C fell from 0.760 to 0.530.
"""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from ctvl.config import PromptConfig, load_config, save_config
from ctvl.data.clinical_text import load_clinical_template
from ctvl.data.questions import QuestionSet
from ctvl.infer.generate import load_answers, run_generate
from ctvl.infer.predict import load_predictions, run_predict
from ctvl.utils.errors import load_errors

from ..conftest import TINY_PREPROCESS
from .conftest import write_subset

TWO_QUESTIONS = [("tumor", "What is the location and size of the primary lung tumor?"),
                 ("pleura", "Is there any pleural involvement or effusion present?")]


@pytest.fixture(scope="module")
def subset(cohort, tmp_path_factory):
    """Six cases of the cohort with absolute image paths."""
    return write_subset(cohort, tmp_path_factory.mktemp("prompts"), 6)


@pytest.fixture(scope="module")
def explicit(cox_model, subset, template, tmp_path_factory):
    """Predictions with the training template given by hand (what the demo used to do)."""
    out = tmp_path_factory.mktemp("explicit") / "pred.csv"
    run_predict(cox_model, subset[0], out, clinical_template=str(template), workers=0, progress=False)
    return load_predictions(out).set_index("case_id")


def test_the_model_folder_holds_the_training_prompts(cohort, cox_model, template):
    prompts = load_config(PromptConfig, cox_model / "prompts.yaml")
    assert prompts.clinical_template == load_clinical_template(template)
    assert prompts.questions == tuple((q.id, q.text) for q in QuestionSet().questions)
    assert json.loads((cox_model / "ctvl_model.json").read_text())["prompts"] == "prompts.yaml"
    assert load_config(PromptConfig, cohort.vqa.parent / "prompts.yaml") == prompts  # from build-vqa


def test_prompt_config_round_trips_through_yaml(template, tmp_path):
    cfg = PromptConfig(load_clinical_template(template), (("a", "Question A?"), ("b", "Question B?")))
    save_config(cfg, tmp_path / "p.yaml")
    assert load_config(PromptConfig, tmp_path / "p.yaml") == cfg and cfg.has_context
    assert not PromptConfig().has_context
    with pytest.raises(ValueError, match="unique ids"):
        PromptConfig(questions=(("a", "x"), ("a", "y")))


def test_readme_predict_command_gives_the_training_prompts_risks(cox_model, subset, explicit, tmp_path):
    out = tmp_path / "pred.parquet"
    done = subprocess.run([sys.executable, "-m", "ctvl.cli", "predict", "--model", str(cox_model),
                           "--inputs", str(subset[0]), "--out", str(out), "--workers", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    df = load_predictions(out).set_index("case_id")
    assert df["has_context"].all()
    np.testing.assert_allclose(df["risk"], explicit.loc[df.index, "risk"], rtol=0, atol=1e-6)


def test_generate_uses_the_model_prompts_by_default(deephit_model, subset, template, tmp_path):
    kwargs = dict(questions=TWO_QUESTIONS, preprocess_cfg=TINY_PREPROCESS, max_new_tokens=4, batch_size=3,
                  progress=False)
    run_generate(deephit_model, subset[0], tmp_path / "default", **kwargs)
    run_generate(deephit_model, subset[0], tmp_path / "explicit", clinical_template=str(template), **kwargs)
    default = load_answers(tmp_path / "default" / "answers.jsonl")
    given = load_answers(tmp_path / "explicit" / "answers.jsonl")
    assert [r["answer"] for r in default] == [r["answer"] for r in given]
    np.testing.assert_allclose([r["risk"] for r in default], [r["risk"] for r in given], atol=1e-6)


def test_no_clinical_table_is_an_error_unless_allowed(cohort, cox_model, subset, explicit, tmp_path):
    folder = tmp_path / "volumes"
    folder.mkdir()
    for cid, image in zip(subset[1]["case_id"][:2], subset[1]["image"][:2]):
        (folder / f"{cid}.nii.gz").symlink_to(image)
    with pytest.raises(ValueError, match="no clinical table.*--allow_missing_context"):
        run_predict(cox_model, folder, tmp_path / "a.csv", workers=0, progress=False)
    summary = run_predict(cox_model, folder, tmp_path / "b.csv", workers=0, progress=False,
                          allow_missing_context=True)
    df = load_predictions(tmp_path / "b.csv").set_index("case_id")
    assert summary.ok and not df["has_context"].any()
    assert not np.allclose(df["risk"], explicit.loc[df.index, "risk"])  # the sentence matters
    with pytest.raises(ValueError, match="no clinical template"):
        run_predict(cox_model, subset[0], tmp_path / "c.csv", clinical_template="", workers=0, progress=False)


def test_a_table_without_the_template_columns_is_an_error(cox_model, subset, tmp_path):
    path = tmp_path / "no_age.csv"
    subset[1].drop(columns=["age", "ecog"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks the template's column\(s\) \['age', 'ecog'\]"):
        run_predict(cox_model, path, tmp_path / "a.csv", workers=0, progress=False)
    summary = run_predict(cox_model, path, tmp_path / "b.csv", workers=0, progress=False,
                          allow_missing_context=True)
    assert summary.ok


def test_a_case_missing_from_the_clinical_table_fails_alone(cox_model, subset, explicit, tmp_path):
    clinical = subset[1].drop(columns=["image"]).iloc[1:]  # the first case has no clinical row
    first = subset[1]["case_id"][0]
    summary = run_predict(cox_model, subset[0], tmp_path / "a.csv", clinical=clinical, workers=0,
                          progress=False)
    errors = load_errors(tmp_path / "errors.csv")
    df = load_predictions(tmp_path / "a.csv").set_index("case_id")
    assert summary.exit_code == 1 and summary.failed == [first] and first not in df.index
    assert list(errors["stage"]) == ["context"] and list(errors["case_id"]) == [first]
    np.testing.assert_allclose(df["risk"], explicit.loc[df.index, "risk"], atol=1e-6)
    allowed = run_predict(cox_model, subset[0], tmp_path / "b.csv", clinical=clinical, workers=0,
                          progress=False, allow_missing_context=True)
    assert allowed.ok and allowed.n_no_context == 1


def test_overriding_the_prompts_is_logged(cox_model, subset, tmp_path, caplog):
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nparts: ['{age} years old']\n")
    with caplog.at_level(logging.WARNING, logger="ctvl.infer.inputs"):
        run_predict(cox_model, subset[0], tmp_path / "a.csv", clinical_template=str(other),
                    questions=TWO_QUESTIONS, workers=0, progress=False)
    text = caplog.text
    assert "differs from the one the model was trained with" in text
    assert "questions given differ from the 6 the model was trained with" in text


def test_an_older_model_folder_falls_back_to_its_run_config(cox_model, tmp_path, caplog):
    import shutil

    from ctvl.infer.inputs import load_model_run, resolve_template

    old = tmp_path / "runs" / "model"
    shutil.copytree(cox_model, old)
    (old / "prompts.yaml").unlink()
    manifest = json.loads((old / "ctvl_model.json").read_text())
    del manifest["prompts"]
    (old / "ctvl_model.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="ctvl.infer.inputs"):
        run = load_model_run(old, "cpu")
    assert run.prompts is None and "has no prompts.yaml" in caplog.text
    assert resolve_template(None, run) is None  # its run config names no template: as before
