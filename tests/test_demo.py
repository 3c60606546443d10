"""``ctvl demo``'s data preparation: a given encoder checkpoint replaces the train-split pre-training."""

import json

import pytest
import torch

from ctvl.config import SyntheticCohortConfig
from ctvl.workflows.demo import prepare_demo_data
from ctvl.infer.encode import encoder_fingerprint
from ctvl.models.vision3d import build_image_encoder, load_merlin_image_encoder
from ctvl.train.encoder_pretrain import save_merlin_checkpoint

from .conftest import TINY_PREPROCESS, TINY_VISION

COHORT = SyntheticCohortConfig(n_cases=4, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0), seed=2)


def test_a_given_encoder_is_used_instead_of_pretraining(tmp_path):
    torch.manual_seed(3)
    mine = save_merlin_checkpoint(build_image_encoder(TINY_VISION), tmp_path / "mine.pt")
    data = prepare_demo_data(tmp_path / "out", COHORT, TINY_PREPROCESS, TINY_VISION, workers=0, encoder_epochs=3,
                             encoder=mine, progress=False)
    assert data.encoder_checkpoint == mine and not (tmp_path / "out" / "encoder").exists()
    # The feature cache was filled by that encoder.
    expected = encoder_fingerprint(load_merlin_image_encoder(mine, TINY_VISION))
    assert json.loads((data.feature_cache / "encoder.json").read_text())["encoder"] == expected
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        prepare_demo_data(tmp_path / "out", COHORT, TINY_PREPROCESS, TINY_VISION, workers=0,
                          encoder=tmp_path / "missing.pt", progress=False)
