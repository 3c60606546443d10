"""TimeDiscretizer: cuts and bin indices equal to pycox's LabTransDiscreteTime."""

import logging
import warnings

import numpy as np
import pytest
import torch

from ctvl.survival.discretize import TimeDiscretizer


def make_times(seed, n, rounded=False, dtype=np.float64):
    rng = np.random.default_rng(seed)
    time = rng.exponential(10.0, size=n)
    if rounded:
        time = np.round(time) + 1  # many ties
    return time.astype(dtype), (rng.random(n) < 0.6).astype(np.float64)


@pytest.mark.parametrize("scheme", ["equidistant", "quantile"])
@pytest.mark.parametrize(
    "seed,n,bins,rounded,dtype",
    [(0, 200, 10, False, np.float64), (1, 57, 5, True, np.float64), (2, 300, 20, False, np.float32),
     (3, 40, 8, True, np.float32), (4, 500, 30, True, np.float64)],
)
def test_cuts_and_indices_equal_pycox(scheme, seed, n, bins, rounded, dtype, caplog):
    pytest.importorskip("pycox")
    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    time, event = make_times(seed, n, rounded, dtype)
    with warnings.catch_warnings(), caplog.at_level(logging.ERROR):
        warnings.simplefilter("ignore")  # both warn when quantile cuts repeat
        pycox_scheme = "quantiles" if scheme == "quantile" else scheme
        theirs = LabTransDiscreteTime(bins, scheme=pycox_scheme).fit(time, event)
        ours = TimeDiscretizer(bins, scheme).fit(time, event)
    assert ours.cuts.dtype == theirs.cuts.dtype
    np.testing.assert_array_equal(ours.cuts, theirs.cuts)
    # held-out times: beyond the last cut, exactly on cuts, between cuts; events and censorings
    probe, probe_event = make_times(seed + 100, 80, rounded, dtype)
    probe = np.concatenate([probe * 1.5, theirs.cuts.astype(dtype)])
    probe_event = np.concatenate([probe_event, np.arange(len(theirs.cuts)) % 2])
    idx_theirs, ev_theirs = theirs.transform(probe, probe_event)
    idx_ours, ev_ours = ours.transform(probe, probe_event)
    np.testing.assert_array_equal(idx_ours, idx_theirs)
    np.testing.assert_array_equal(ev_ours, ev_theirs.astype(bool))
    assert idx_ours.dtype == np.int64 and ev_ours.dtype == bool


def test_semantics_on_a_small_example():
    disc = TimeDiscretizer(3, "equidistant").fit(np.array([2.0, 4.0]), np.array([1, 1]))
    np.testing.assert_array_equal(disc.cuts, [0.0, 2.0, 4.0])
    idx, ev = disc.transform(np.array([1.0, 1.0, 2.0, 2.0, 5.0]), np.array([1, 0, 1, 0, 1]))
    # events move right (to the next cut), censorings left; beyond the last cut: censored there
    np.testing.assert_array_equal(idx, [1, 0, 1, 1, 2])
    np.testing.assert_array_equal(ev, [True, False, True, False, False])


def test_tensor_in_tensor_out_and_validation():
    time = torch.tensor([1.0, 3.0, 5.0, 7.0])
    event = torch.tensor([True, False, True, True])
    disc = TimeDiscretizer(4, "quantile")
    with pytest.raises(ValueError, match="fit"):
        disc.transform(time, event)
    idx, ev = disc.fit_transform(time, event)
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.long and ev.dtype == torch.bool
    with pytest.raises(ValueError, match="censored"):
        TimeDiscretizer(3).fit(time, event).transform(torch.tensor([-1.0]), torch.tensor([False]))
    with pytest.raises(ValueError, match="scheme"):
        TimeDiscretizer(3, "quantiles")
    with pytest.raises(ValueError, match="num_bins"):
        TimeDiscretizer(1)
