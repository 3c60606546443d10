"""The feature cache stores float16 unless that would overflow, and refuses non-finite maps."""

import numpy as np
import pytest

from ctvl.data import feature_cache as fc


def test_float16_by_default_float32_when_out_of_range(tmp_path):
    small = np.random.default_rng(0).normal(size=(4, 2, 2, 3)).astype(np.float32)
    large = small * 1e5
    for key, array, dtype in (("a" * 32, small, np.float16), ("b" * 32, large, np.float32)):
        rel = fc.save_feature(tmp_path, key, array)
        stored = np.load(tmp_path / rel)
        assert stored.dtype == dtype and np.isfinite(stored).all()
        np.testing.assert_allclose(stored, array, rtol=1e-3)


def test_non_finite_maps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="NaN or inf"):
        fc.save_feature(tmp_path, "c" * 32, np.array([1.0, np.inf]))


def test_index_round_trip_and_lookup(tmp_path):
    rel = fc.save_feature(tmp_path, "d" * 32, np.ones((2, 1, 1, 1)))
    fc.write_index(tmp_path, {"case1": {"case_id": "case1", "key": "d" * 32, "path": rel, "shape": "2x1x1x1",
                                        "encoder": "e", "image_key": "i"}})
    assert fc.load_features(tmp_path, "case1").shape == (2, 1, 1, 1)
    with pytest.raises(KeyError, match="case2"):
        fc.load_features(tmp_path, "case2")
