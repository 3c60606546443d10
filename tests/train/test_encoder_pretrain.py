"""Phenotype pre-training of the encoder: label handling, masked loss, and the Merlin-layout export."""

import numpy as np
import pandas as pd
import pytest
import torch

from ctvl.config import VisionConfig
from ctvl.models.vision3d import build_image_encoder, load_merlin_image_encoder
from ctvl.train.encoder_pretrain import label_matrix, phenotype_loss, pretrain_encoder, save_merlin_checkpoint


def test_label_matrix_keeps_binary_standardises_numbers_drops_the_rest():
    labels = pd.DataFrame({"present": [True, False, True, False], "size_mm": [10.0, np.nan, 30.0, 20.0],
                           "side": ["left", "right", None, "left"], "constant": [1, 1, 1, 1]})
    values, binary, cols = label_matrix(labels)
    assert cols == ["present", "size_mm"] and binary.tolist() == [True, False]
    assert np.isnan(values[1, 1]) and abs(np.nanmean(values[:, 1])) < 1e-6


def test_phenotype_loss_ignores_missing_targets():
    logits = torch.tensor([[2.0, 1.0], [0.0, 5.0]])
    target = torch.tensor([[1.0, float("nan")], [0.0, 5.0]])
    binary = torch.tensor([True, False])
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(2.0), torch.tensor(1.0))
                + torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(0.0), torch.tensor(0.0))) / 3
    torch.testing.assert_close(phenotype_loss(logits, target, binary), expected)


def test_pretraining_fits_a_bright_blob_label_and_exports_merlin_layout(tmp_path):
    rng = np.random.default_rng(0)
    images, present = {}, []
    for i in range(16):
        vol = rng.normal(0.3, 0.05, (1, 32, 32, 32)).astype(np.float32)
        if i % 2:
            vol[:, 10:20, 10:20, 10:20] = 0.9
        images[f"c{i}"] = vol
        present.append(bool(i % 2))
    labels = pd.DataFrame({"blob": present}, index=list(images))
    torch.manual_seed(0)
    encoder = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8, frozen=False))
    history = pretrain_encoder(encoder, images.__getitem__, labels, epochs=8, batch_size=8, lr=3e-3, progress=False)
    assert history[-1] < 0.5 * history[0]
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    path = save_merlin_checkpoint(encoder, tmp_path / "merlin.pt")
    loaded = load_merlin_image_encoder(path, VisionConfig(layers=(1, 1, 1, 1), base_width=8))
    x = torch.from_numpy(images["c1"][None])
    torch.testing.assert_close(loaded(x), encoder(x))


def test_no_usable_label_is_refused():
    with pytest.raises(ValueError, match="no usable label"):
        label_matrix(pd.DataFrame({"side": ["left", "right"]}))
