"""Risk as answer text: every encoding writes only its candidates and reads them back."""

import numpy as np
import pytest

from ctvl.data.risk_text import DECILE_WORDS, RiskEncoding

TRAIN = np.random.default_rng(0).normal(0.3, 0.8, 500)


@pytest.mark.parametrize("name", ["percentile", "log_hazard", "decile"])
def test_encode_writes_candidates_that_parse_back_in_risk_order(name):
    enc = RiskEncoding(name).fit(TRAIN)
    h = np.random.default_rng(1).normal(0.3, 1.5, 200)  # wider than training: clipped, not broken
    answers = enc.encode(h)
    assert set(answers) <= set(enc.candidates)
    values = np.array([enc.parse(a) for a in answers])
    order = np.argsort(h)
    assert np.all(np.diff(values[order]) >= 0)  # monotone in the teacher's risk
    back = enc.to_log_hazard(values)
    assert np.all(np.diff(back[order]) >= -1e-12)
    assert enc.parse("not an answer") is None and enc.parse(" 7 ") == enc.parse("7")


def test_percentile_is_the_mid_rank_among_training_patients():
    enc = RiskEncoding("percentile").fit(np.arange(100.0))
    assert enc.encode(np.array([-1.0, 0.0, 49.0, 99.0, 500.0])) == ["0", "0", "50", "100", "100"]
    assert enc.candidates == [str(i) for i in range(101)]
    np.testing.assert_allclose(enc.to_log_hazard(np.array([0.0, 50.0, 100.0])), [0.0, 49.5, 99.0])


def test_log_hazard_is_centred_signed_and_has_no_negative_zero():
    enc = RiskEncoding("log_hazard").fit(np.array([-1.0, 0.0, 1.0, 2.0]))  # mean 0.5
    assert enc.encode(np.array([0.5, 1.234, -10.0])) == ["+0.00", "+0.73", "-1.50"]
    assert "-0.00" not in enc.candidates and enc.candidates[0] == "-1.50" and enc.candidates[-1] == "+1.50"
    assert enc.to_log_hazard(np.array([0.73]))[0] == pytest.approx(1.23)


def test_decile_words():
    enc = RiskEncoding("decile").fit(np.arange(1000.0))
    assert enc.candidates == list(DECILE_WORDS)
    assert enc.encode(np.array([0.0, 550.0, 999.0])) == ["first", "sixth", "tenth"]


def test_unknown_encoding_and_too_little_training_data():
    with pytest.raises(ValueError, match="unknown risk encoding"):
        RiskEncoding("stars")
    with pytest.raises(ValueError, match=">= 2 finite"):
        RiskEncoding().fit(np.array([1.0]))
