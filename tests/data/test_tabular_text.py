"""Patient sentences of survival tables: curated templates of the bundled sets, an automatic one for any table,
and the perturbed extra rows of distillation."""

import numpy as np
import pandas as pd
import pytest

from ctvl.data.clinical_text import automatic_template, build_clinical_texts, bundled_template, template_columns
from ctvl.data.tabular import BUNDLED_DATASETS, load_bundled_dataset, perturb_covariates


@pytest.mark.parametrize("name", BUNDLED_DATASETS)
def test_curated_template_reads_every_column_and_never_writes_nan(name):
    table = load_bundled_dataset(name)
    cfg = bundled_template(name)
    assert set(template_columns(cfg)) == set(table.covariates.columns)
    texts = build_clinical_texts(table.covariates, cfg)
    assert texts.str.len().min() > 40
    assert not texts.str.contains(r"\bnan\b|\{|\}", regex=True).any()


def test_automatic_template_names_every_column_with_its_value():
    df = pd.DataFrame({"Age_in_years": [54.0, 61.5], "tumour.size": [20, 35], "grade": ["II", None],
                       "2nd line": [True, False]})
    cfg = automatic_template(df.columns)
    assert template_columns(cfg) == list(df.columns)
    texts = list(build_clinical_texts(df, cfg))
    assert texts[0] == "Age in years is 54, tumour size is 20, grade is II, 2nd line is True."
    assert texts[1] == "Age in years is 61.5, tumour size is 35, 2nd line is False."  # missing: dropped


def test_unknown_bundled_template_names_the_known_ones():
    with pytest.raises(ValueError, match="known: .*gbsg2"):
        bundled_template("mimic")


def test_perturbed_rows_stay_in_range_keep_categories_and_are_seeded():
    table = load_bundled_dataset("gbsg2")
    cov = table.covariates
    extra = perturb_covariates(cov, copies=3, scale=0.5, seed=4)
    assert len(extra) == 3 * len(cov) and list(extra.columns) == list(cov.columns)
    for name in ("age", "tsize", "pnodes"):
        assert extra[name].between(cov[name].min(), cov[name].max()).all()
        assert (extra[name] == extra[name].round()).all()  # integer-valued columns stay integers
    assert (extra["age"].to_numpy() != np.tile(cov["age"].to_numpy(), 3)).mean() > 0.5
    assert extra["tgrade"].equals(pd.concat([cov["tgrade"]] * 3, ignore_index=True))
    pd.testing.assert_frame_equal(extra, perturb_covariates(cov, copies=3, scale=0.5, seed=4))
    assert len(perturb_covariates(cov, copies=0)) == 0
