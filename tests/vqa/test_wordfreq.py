"""Medical word frequencies: filtering, counting, plural folding, CSV + PNG output."""

import pandas as pd
import pytest

from ctvl.vqa.wordfreq import compute_word_frequencies, load_wordlist, tokenize, write_word_frequencies

REPORTS = [
    "No pleural effusion. A 3 cm mass in the right upper lobe; nodules in the left lung.",
    "Pleural effusion-thickening was not detected. Nodule of 4 mm in the right lung.",
    "The heart is normal. There is no mass.",
]


def test_counts_equal_a_hand_count_with_the_shipped_lists():
    freqs = compute_word_frequencies(
        REPORTS, load_wordlist(kind="stopwords"), load_wordlist(kind="allowlist")
    )
    counts = dict(zip(freqs["word"], freqs["count"]))
    assert counts["pleural"] == 2 and counts["effusion"] == 2 and counts["mass"] == 2 and counts["lung"] == 2
    assert counts["nodule"] == 2  # "nodules" folded into "nodule"
    assert counts["thickening"] == 1  # "effusion-thickening" split at the hyphen
    for general in ("the", "was", "detected", "there", "mm", "cm", "in", "is", "no", "a"):
        assert general not in counts
    assert dict(zip(freqs["word"], freqs["reports"]))["mass"] == 2
    assert list(freqs["count"]) == sorted(freqs["count"], reverse=True)


def test_allowlist_mode_keeps_only_listed_words_and_overrides_stopwords(tmp_path):
    (tmp_path / "allow.txt").write_text("# medical\nmass lobe\nnormal\n")
    (tmp_path / "stop.txt").write_text("normal heart\n")
    allow, stop = load_wordlist(tmp_path / "allow.txt"), load_wordlist(tmp_path / "stop.txt")
    only = compute_word_frequencies(REPORTS, stop, allow, mode="allowlist")
    assert set(only["word"]) == {"mass", "lobe", "normal"}
    both = compute_word_frequencies(REPORTS, stop, allow)
    assert "normal" in set(both["word"]) and "heart" not in set(both["word"])


def test_tokenizer_handles_non_ascii_and_digits():
    assert tokenize("Kalp boyutu ﬁbrotik, 2,5\u00a0cm; T7-vertebra") == [
        "kalp",
        "boyutu",
        "fibrotik",
        "cm",
        "t",
        "vertebra",
    ]


def test_writes_csv_and_png(tmp_path):
    freqs = compute_word_frequencies(REPORTS * 3, load_wordlist(kind="stopwords"))
    csv_path, png_path = write_word_frequencies(freqs, tmp_path, top_k=5, chart_top_n=3)
    back = pd.read_csv(csv_path)
    assert list(back.columns) == ["word", "count", "reports"] and len(back) == 5
    assert back.equals(freqs.head(5).reset_index(drop=True))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_wordlist(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="mode"):
        compute_word_frequencies(REPORTS, mode="medical")
    assert compute_word_frequencies([]).empty
