"""Merlin-compatible 3D encoder: shapes, axis order, checkpoint loading, frozen BatchNorm."""

import pickle

import pytest
import torch
from torch import nn

from ctvl.config import VisionConfig
from ctvl.models.vision3d import (
    MERLIN_IMAGE_PREFIX,
    build_image_encoder,
    compute_feature_shape,
    load_merlin_image_encoder,
)

TINY = VisionConfig(layers=(1, 1, 1, 1), base_width=8)


def merlin_state_dict(cfg: VisionConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Merlin-format checkpoint: image keys under the real prefix plus the parts ctvl must ignore."""
    torch.manual_seed(seed)
    enc = build_image_encoder(cfg)
    for bn in (m for m in enc.modules() if isinstance(m, nn.BatchNorm3d)):  # non-trivial running stats
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(7)
    state = {MERLIN_IMAGE_PREFIX + k: v.clone() for k, v in enc.state_dict().items()}
    c = enc.out_channels
    state[MERLIN_IMAGE_PREFIX + "classifier.weight"] = torch.randn(1692, c, 1, 1, 1)
    state[MERLIN_IMAGE_PREFIX + "classifier.bias"] = torch.randn(1692)
    state[MERLIN_IMAGE_PREFIX + "contrastive_head.weight"] = torch.randn(512, c, 1, 1, 1)
    state["encode_text.text_encoder.embeddings.word_embeddings.weight"] = torch.randn(10, 4)
    state["encode_text.linear_layer.weight"] = torch.randn(512, 4)
    state["logit_scale"] = torch.tensor(2.65)
    return state


@pytest.mark.parametrize("roi", [(32, 32, 32), (64, 32, 48)])
def test_tiny_output_shape_is_c_x_y_z(roi):
    # (64, 32, 48) has a different size per axis and z is not strided by the stem, so a wrong
    # permutation would change the output shape.
    enc = build_image_encoder(TINY)
    out = enc(torch.rand(2, 1, *roi))
    assert out.shape == (2, 256, *compute_feature_shape(roi))
    assert compute_feature_shape((64, 32, 48)) == (2, 1, 3)


def test_resnet152_shape_and_merlin_keys_on_meta():
    with torch.device("meta"):
        enc = build_image_encoder(VisionConfig())
        out = enc(torch.empty(1, 1, 224, 224, 160))
    assert out.shape == (1, 2048, 7, 7, 10)  # (B, C, x, y, z); Merlin's native is (B, 2048, z=10, 7, 7)
    assert compute_feature_shape((224, 224, 160)) == (7, 7, 10)
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1, 1)
    assert shapes["layer3.35.conv2.weight"] == (256, 256, 3, 3, 3)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert "layer4.2.bn3.num_batches_tracked" in shapes
    assert enc.layer2[0].conv2.stride == (2, 2, 2) and enc.layer2[0].downsample[0].stride == (2, 2, 2)


@pytest.mark.slow
def test_resnet152_real_forward_shape():
    enc = build_image_encoder(VisionConfig())
    with torch.no_grad():
        assert enc(torch.rand(1, 1, 224, 224, 160)).shape == (1, 2048, 7, 7, 10)


@pytest.mark.parametrize("wrapped", [False, True])
def test_merlin_checkpoint_loads(tmp_path, wrapped):
    state = merlin_state_dict()
    path = tmp_path / "merlin.pt"
    torch.save({"state_dict": state} if wrapped else state, path)
    enc = load_merlin_image_encoder(path, TINY)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[MERLIN_IMAGE_PREFIX + k]), k
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    with torch.no_grad():
        assert enc(torch.rand(1, 1, 32, 32, 32)).shape == (1, 256, 1, 1, 2)


def test_build_image_encoder_loads_the_configured_checkpoint(tmp_path):
    import dataclasses

    import ctvl.models

    state = merlin_state_dict(seed=3)
    torch.save(state, tmp_path / "merlin.pt")
    enc = ctvl.models.build_image_encoder(dataclasses.replace(TINY, checkpoint=str(tmp_path / "merlin.pt")))
    assert all(torch.equal(v, state[MERLIN_IMAGE_PREFIX + k]) for k, v in enc.state_dict().items())
    torch.manual_seed(4)
    random = build_image_encoder(TINY)  # no checkpoint: random init, not the weights above
    assert not torch.equal(random.conv1.weight, enc.conv1.weight)
    assert ctvl.models.load_merlin_image_encoder is load_merlin_image_encoder


def test_checkpoint_problems_reported_by_name(tmp_path):
    state = merlin_state_dict()
    state[MERLIN_IMAGE_PREFIX + "layer2.0.conv2.weight"] = torch.randn(16, 16, 3, 3)  # 2D leftover
    del state[MERLIN_IMAGE_PREFIX + "layer3.0.bn1.running_var"]
    state[MERLIN_IMAGE_PREFIX + "layer5.0.conv1.weight"] = torch.randn(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_merlin_image_encoder(tmp_path / "bad.pt", TINY)
    msg = str(err.value)
    assert "shape mismatch: layer2.0.conv2.weight checkpoint (16, 16, 3, 3) != model (16, 16, 3, 3, 3)" in msg
    assert "missing: layer3.0.bn1.running_var" in msg
    assert "unexpected: layer5.0.conv1.weight" in msg


def test_checkpoint_for_another_config_is_refused(tmp_path):
    torch.save(merlin_state_dict(VisionConfig(layers=(1, 1, 1, 1), base_width=4)), tmp_path / "w4.pt")
    with pytest.raises(ValueError, match="shape mismatch: conv1.weight"):
        load_merlin_image_encoder(tmp_path / "w4.pt", TINY)


def test_not_a_merlin_checkpoint(tmp_path):
    torch.save({"encode_text.linear_layer.weight": torch.randn(2, 2)}, tmp_path / "text.pt")
    with pytest.raises(ValueError, match="no 'encode_image.i3_resnet.\\*' keys"):
        load_merlin_image_encoder(tmp_path / "text.pt", TINY)
    with pytest.raises(ValueError, match="does not exist"):
        load_merlin_image_encoder(tmp_path / "missing.pt", TINY)


class _Pickled:
    pass


def test_checkpoint_is_loaded_without_arbitrary_pickles(tmp_path):
    state = merlin_state_dict()
    torch.save({"state_dict": state, "extra": _Pickled()}, tmp_path / "pickled.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_merlin_image_encoder(tmp_path / "pickled.pt", TINY)


def _train_step(enc: nn.Module) -> None:
    head = nn.Linear(enc.out_channels, 1)
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    enc.train()
    head.train()
    loss = head(enc(torch.rand(2, 1, 32, 32, 32) * 3 + 1).mean(dim=(2, 3, 4))).pow(2).mean()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_encoder_batchnorm_stats_never_move(frozen):
    torch.manual_seed(0)
    enc = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8, frozen=frozen))
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    _train_step(enc)
    after = enc.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    if frozen:
        assert moved == [] and not enc.training
    else:  # the same step does move statistics and weights of a trainable encoder
        assert "bn1.running_mean" in moved and "conv1.weight" in moved and enc.training


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = build_image_encoder(
            VisionConfig(layers=(1, 1, 1, 1), base_width=8, frozen=False, gradient_checkpointing=ckpt)
        )
        torch.manual_seed(1)
        enc(torch.rand(1, 1, 32, 32, 32)).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_input_must_be_single_channel():
    with pytest.raises(ValueError, match=r"\(B, 1, x, y, z\)"):
        build_image_encoder(TINY)(torch.rand(1, 3, 32, 32, 32))
