"""A tiny synthetic cohort prepared once per session: volumes, caches, VQA pairs, encoder checkpoint."""

import pytest

from ..conftest import prepare_tiny_cohort, tiny_model_config


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return prepare_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_cases=40, seed=1)


@pytest.fixture(scope="session")
def tiny_model_cfg(tiny_data):
    return tiny_model_config(str(tiny_data.encoder_checkpoint))
