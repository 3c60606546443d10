"""Cross-rank gathering of survival batches: 2 CPU ranks (gloo) against one process on the concatenated batch.

The worker is module-level so ``torch.multiprocessing.spawn`` can pickle it; this module imports nothing heavy
because each spawned rank imports it again.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctvl.survival.distributed import gather_survival_batch, gather_with_grad, is_distributed
from ctvl.survival.losses import neg_partial_log_likelihood

WORLD = 2
SIZES = (3, 5)  # uneven micro-batches; rank 0 holds no event


def make_global_batch():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    event = torch.tensor([0, 0, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    time = torch.tensor([2.0, 5.0, 1.0, 2.0, 3.0, 1.0, 4.0, 2.0], dtype=torch.float64)  # ties across ranks
    weight = torch.randn(1, 4, generator=g, dtype=torch.float64)
    return x, event, time, weight


def sample_weights():
    """Per-sample (e.g. inverse propensity) weights of the global batch, one of them 0."""
    return torch.tensor([0.5, 2.0, 1.0, 1.5, 0.0, 3.0, 0.7, 1.2], dtype=torch.float64)


def z_coefficients():
    return torch.arange(1.0, 1 + 2 * sum(SIZES), dtype=torch.float64).reshape(-1, 2)


def run_model(x, event, time, weight, gather, sample_weight=None):
    """Linear Cox model; returns (loss, d loss / d log_hz, d loss / d weight, gathered (event, time)).

    With ``sample_weight`` the weighted Cox loss on the gathered weights.
    """
    model = torch.nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    log_hz = model(x).squeeze(-1)
    log_hz.retain_grad()
    if sample_weight is None:
        all_hz, all_event, all_time = gather(log_hz, event, time)
        loss = neg_partial_log_likelihood(all_hz, all_event, all_time, ties="efron")
    else:
        all_hz, all_event, all_time, all_w = gather(log_hz, event, time, weight=sample_weight)
        loss = neg_partial_log_likelihood(all_hz, all_event, all_time, ties="efron", weight=all_w)
    loss.backward()
    return loss.detach(), log_hz.grad, model.weight.grad, all_event, all_time


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x, event, time, weight = make_global_batch()
        lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
        loss, hz_grad, w_grad, all_event, all_time = run_model(x[lo:hi], event[lo:hi], time[lo:hi], weight,
                                                               gather_survival_batch)
        dist.all_reduce(w_grad)  # what DDP / DeepSpeed do with parameter gradients: average over ranks
        w_grad /= WORLD
        weighted = run_model(x[lo:hi], event[lo:hi], time[lo:hi], weight, gather_survival_batch,
                             sample_weights()[lo:hi])
        dist.all_reduce(weighted[2])
        weighted[2].div_(WORLD)
        z = torch.arange(float(hi - lo) * 2, dtype=torch.float64).reshape(-1, 2).requires_grad_()
        gathered_z = gather_with_grad(z + 10 * rank)  # (N, D) tensors, uneven rows
        (gathered_z * z_coefficients()).sum().backward()
        torch.save({"loss": loss, "hz_grad": hz_grad, "w_grad": w_grad, "event": all_event, "time": all_time,
                    "z": gathered_z.detach(), "z_grad": z.grad, "weighted_loss": weighted[0],
                    "weighted_hz_grad": weighted[1], "weighted_w_grad": weighted[2]},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_match_single_process_on_concatenated_batch(tmp_path, monkeypatch):
    # The ranks unpickle ``_worker`` by its module name (tests.survival.test_distributed): they need the
    # repository root on sys.path, which spawn hands down from this process.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    x, event, time, weight = make_global_batch()
    loss, hz_grad, w_grad, _, _ = run_model(x, event, time, weight, lambda *batch: batch)
    single = lambda *batch, weight: (*batch, weight)  # noqa: E731  (one process: the identity)
    w_loss, w_hz_grad, w_w_grad, _, _ = run_model(x, event, time, weight, single, sample_weights())
    coef = z_coefficients()
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
        assert torch.equal(out["event"], event) and torch.equal(out["time"], time)
        torch.testing.assert_close(out["loss"], loss, rtol=0, atol=1e-12)
        # each rank's slice gets world_size x the single-process gradient (every rank's copy of the global
        # loss sends gradient to it); after data-parallel averaging the parameter gradient is exact
        torch.testing.assert_close(out["hz_grad"], WORLD * hz_grad[lo:hi], rtol=0, atol=1e-12)
        torch.testing.assert_close(out["w_grad"], w_grad, rtol=0, atol=1e-12)
        rows = [torch.arange(2.0 * n, dtype=torch.float64).reshape(-1, 2) + 10 * r
                for r, n in enumerate(SIZES)]
        torch.testing.assert_close(out["z"], torch.cat(rows), rtol=0, atol=0)
        torch.testing.assert_close(out["z_grad"], WORLD * coef[lo:hi], rtol=0, atol=0)
        torch.testing.assert_close(out["weighted_loss"], w_loss, rtol=0, atol=1e-12)
        torch.testing.assert_close(out["weighted_hz_grad"], WORLD * w_hz_grad[lo:hi], rtol=0, atol=1e-12)
        torch.testing.assert_close(out["weighted_w_grad"], w_w_grad, rtol=0, atol=1e-12)


def test_identity_without_process_group():
    assert not is_distributed()
    log_hz, event, time = torch.randn(3, requires_grad=True), torch.tensor([True, False, True]), torch.rand(3)
    assert gather_with_grad(log_hz) is log_hz
    assert all(a is b for a, b in zip(gather_survival_batch(log_hz, event, time), (log_hz, event, time)))
    weight = torch.rand(3)
    out = gather_survival_batch(log_hz, event, time, weight=weight)
    assert len(out) == 4 and all(a is b for a, b in zip(out, (log_hz, event, time, weight)))
