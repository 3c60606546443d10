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
    assert history.train[-1] < 0.5 * history.train[0] and history.best_epoch == 8 and history.holdout == []
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    path = save_merlin_checkpoint(encoder, tmp_path / "merlin.pt")
    loaded = load_merlin_image_encoder(path, VisionConfig(layers=(1, 1, 1, 1), base_width=8))
    x = torch.from_numpy(images["c1"][None])
    torch.testing.assert_close(loaded(x), encoder(x))


def _noise_cohort(n: int = 16):
    rng = np.random.default_rng(1)
    images = {f"c{i}": rng.normal(0.3, 0.05, (1, 24, 24, 24)).astype(np.float16) for i in range(n)}
    labels = pd.DataFrame({"a": rng.random(n) < 0.5, "b": rng.normal(size=n)}, index=list(images))
    return images, labels


def _pretrained(images, labels, epochs: int):
    torch.manual_seed(0)
    encoder = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8, frozen=False))
    history = pretrain_encoder(encoder, images.__getitem__, labels, epochs=epochs, batch_size=4, lr=3e-3,
                               holdout=0.25, progress=False)
    return encoder, history


def test_holdout_keeps_the_epoch_with_the_lowest_held_out_loss():
    # Labels that are pure noise: the training loss falls (memorisation), the held-out loss does not.
    images, labels = _noise_cohort()
    encoder, history = _pretrained(images, labels, epochs=6)
    assert len(history.train) == len(history.holdout) == 6
    assert history.train[-1] < history.train[0]
    assert history.holdout[history.best_epoch - 1] == min(history.holdout) and history.best_epoch < 6
    # Training again for exactly best_epoch epochs (same seed, same split) gives the kept weights.
    again, _ = _pretrained(images, labels, epochs=history.best_epoch)
    for (name, kept), (_, ref) in zip(encoder.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(kept, ref, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kw", [dict(epochs=0), dict(holdout=1.0), dict(holdout=-0.1), dict(holdout=0.01)])
def test_bad_pretraining_arguments_are_refused(kw):
    images, labels = _noise_cohort(8)
    encoder = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8, frozen=False))
    with pytest.raises(ValueError):
        pretrain_encoder(encoder, images.__getitem__, labels, **{"epochs": 1, **kw}, progress=False)


def test_no_usable_label_is_refused():
    with pytest.raises(ValueError, match="no usable label"):
        label_matrix(pd.DataFrame({"side": ["left", "right"]}))


def test_cli_trains_on_the_train_split_and_skips_uncached_cases(tiny_data, tmp_path, caplog):
    from ctvl.cli import main

    labels = pd.read_csv(tiny_data.findings_csv)
    uncached = labels.iloc[[0]].assign(case_id="not_in_the_cache", split="train")
    pd.concat([labels, uncached]).to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "encoder.pt"
    args = ["pretrain-encoder", "--labels", str(tmp_path / "labels.csv"),
            "--cache", str(tiny_data.image_cache), "--out", str(out), "--vision.layers", "[1,1,1,1]",
            "--vision.base_width", "8", "--epochs", "2", "--holdout", "0.25"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    n_train = int((labels["split"] == "train").sum())
    held = round(0.25 * n_train)
    assert "not_in_the_cache" in caplog.text
    assert f"{n_train - held} cases ({held} held out)" in caplog.text
    torch.manual_seed(0)
    initial = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8))
    trained = load_merlin_image_encoder(out, VisionConfig(layers=(1, 1, 1, 1), base_width=8))
    assert not torch.equal(trained.conv1.weight, initial.conv1.weight)
    # Unusable input: a clear error and exit code 2, no checkpoint.
    pd.DataFrame({"id": ["a"], "x": [1]}).to_csv(tmp_path / "no_ids.csv", index=False)
    bad = args.copy()
    bad[bad.index("--labels") + 1] = str(tmp_path / "no_ids.csv")
    bad[bad.index("--out") + 1] = str(tmp_path / "x.pt")
    assert main(bad) == 2 and "no_ids.csv: no case_id column" in caplog.text and not (tmp_path / "x.pt").exists()


def test_a_parquet_label_table_with_all_rows(tiny_data, tmp_path, caplog):
    from ctvl.train.encoder_pretrain import run_pretrain_encoder

    labels = pd.read_csv(tiny_data.findings_csv)
    labels.to_parquet(tmp_path / "labels.pq")
    with caplog.at_level("INFO"):
        path, history = run_pretrain_encoder(tmp_path / "labels.pq", tiny_data.image_cache, tmp_path / "enc.pt",
                                             VisionConfig(layers=(1, 1, 1, 1), base_width=8), split=None,
                                             epochs=1, holdout=0.0, progress=False)
    assert path.exists() and len(history.train) == 1 and history.best_epoch == 1
    assert f"{len(labels)} cases (0 held out)" in caplog.text  # split=None: train and validation rows
