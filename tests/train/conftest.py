"""A tiny synthetic cohort prepared once per session: volumes, caches, VQA pairs, encoder checkpoint."""

import pytest

from ctvl.config import (
    CTVLConfig,
    DecoderConfig,
    LoRAConfig,
    PreprocessConfig,
    SurvivalConfig,
    SyntheticCohortConfig,
    VisionConfig,
    replace,
)
from ctvl.demo import prepare_demo_data

PREPROCESS = PreprocessConfig(spacing=(10.0, 10.0, 10.0), roi_size=(32, 32, 32))
VISION = VisionConfig(layers=(1, 1, 1, 1), base_width=8)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    cohort = SyntheticCohortConfig(n_cases=40, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0), seed=1)
    return prepare_demo_data(tmp_path_factory.mktemp("cohort"), cohort, PREPROCESS, VISION, workers=0, progress=False)


@pytest.fixture(scope="session")
def tiny_model_cfg(tiny_data):
    return CTVLConfig(
        vision=replace(VISION, checkpoint=str(tiny_data.encoder_checkpoint)),
        decoder=DecoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                              tokenizer_vocab_size=400),
        lora=LoRAConfig(r=4, alpha=8, dropout=0.0),
        survival=SurvivalConfig(adapter_hidden=16, adapter_dropout=0.0),
    )
