"""Medical word frequencies across radiology reports (paper section 2.2, Fig. 2 left).

The top-100 words seed the question templates. Reports are lower-cased, Unicode-normalised (NFKC) and
tokenised into alphabetic words (hyphenated words kept whole); stop words and general English are
dropped with a shipped, editable list (``ctvl/resources/vqa/stopwords_en.txt``); a medical allow-list
(``ctvl/resources/vqa/medical_terms.txt``) always wins over the stop list, or, with
``mode="allowlist"``, is the only thing counted.

Entry points:
    load_wordlist(path=None, kind="stopwords") -> frozenset[str]
    tokenize(text) -> list[str]
    compute_word_frequencies(texts, stopwords, allowlist, ...) -> DataFrame[word, count, reports]
    write_word_frequencies(freqs, out_dir, top_k=100, chart_top_n=30) -> (csv_path, png_path)

Example:
    >>> freqs = compute_word_frequencies(["No pleural effusion.", "Pleural effusion on the right."],
    ...                                  stopwords=load_wordlist(kind="stopwords"))
    >>> freqs.head(2).to_dict("records")
    [{'word': 'effusion', 'count': 2, 'reports': 2}, {'word': 'pleural', 'count': 2, 'reports': 2}]
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")
_SHIPPED = {"stopwords": "stopwords_en.txt", "allowlist": "medical_terms.txt"}


def load_wordlist(
    path: Optional[str | Path] = None, kind: Literal["stopwords", "allowlist"] = "stopwords"
) -> frozenset[str]:
    """Read a word list: whitespace-separated lower-cased words, ``#`` starts a comment.

    Args:
        path: a text file; None reads the list shipped with ctvl for ``kind``.
        kind: which shipped list to read when ``path`` is None.
    """
    if path is None:
        text = (
            resources.files("ctvl").joinpath("resources", "vqa", _SHIPPED[kind]).read_text(encoding="utf-8")
        )
    else:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"word list {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
    words = (w.lower() for line in text.splitlines() for w in line.split("#", 1)[0].split())
    return frozenset(words)


def normalise_text(text: str) -> str:
    """NFKC (ligatures, full-width forms, non-breaking spaces) and collapsed whitespace."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text or "")).strip()


def tokenize(text: str) -> list[str]:
    """Lower-cased alphabetic words; digits and punctuation split words; hyphenated words stay whole.

    >>> tokenize("A 25-mm mass in the right upper lobe; effusion-thickening, Türkçe")
    ['a', 'mm', 'mass', 'in', 'the', 'right', 'upper', 'lobe', 'effusion-thickening', 'türkçe']
    """
    return _WORD.findall(normalise_text(text).lower())


def _keep(word: str, stopwords: frozenset, allowlist: frozenset, mode: str, min_length: int) -> bool:
    if word in allowlist:
        return True
    if mode == "allowlist" or len(word) < min_length:
        return False
    parts = word.split("-")
    return not all(p in stopwords for p in parts) and word not in stopwords


def _singulars(word: str) -> tuple[str, ...]:
    if len(word) < 4 or word.endswith(("ss", "us", "is")):
        return ()
    if word.endswith("es"):
        return word[:-1], word[:-2]  # "lobes" -> "lobe", "masses" -> "mass"
    return (word[:-1],) if word.endswith("s") else ()


def _fold_plurals(counts: Counter, reports: Counter) -> None:
    """Merge "nodules" into "nodule" when both occur (the singular carries the sum)."""
    for word in sorted(counts):
        singular = next((s for s in _singulars(word) if s in counts), None)
        if singular is not None:
            counts[singular] += counts.pop(word)
            reports[singular] = max(reports[singular], reports.pop(word))


def compute_word_frequencies(
    texts: Iterable[str],
    stopwords: frozenset[str] = frozenset(),
    allowlist: frozenset[str] = frozenset(),
    *,
    mode: Literal["stopwords", "allowlist"] = "stopwords",
    min_length: int = 3,
    fold_plurals: bool = True,
    split_hyphens: bool = True,
):
    """Count medical words over reports.

    Args:
        texts: one string per report (findings + impression).
        stopwords: words dropped (``mode="stopwords"``); hyphenated words are split first when
            ``split_hyphens`` (CT-RATE writes "effusion-thickening").
        allowlist: words always kept; with ``mode="allowlist"`` the only words kept.
        mode: filter mode, see above.
        min_length: shorter words are dropped unless allow-listed.
        fold_plurals: count "nodules" as "nodule" when the singular also occurs.
        split_hyphens: split "effusion-thickening" into two words.

    Returns:
        pandas.DataFrame: columns ``word`` (str), ``count`` (int, occurrences), ``reports`` (int, number of
        reports containing it; after plural folding, the larger of the two), sorted by count then word.
    """
    import pandas as pd

    if mode not in ("stopwords", "allowlist"):
        raise ValueError(f"word filter mode must be 'stopwords' or 'allowlist', got {mode!r}")
    counts, reports = Counter(), Counter()
    for text in texts:
        words = tokenize(text)
        if split_hyphens:
            words = [p for w in words for p in w.split("-") if p]
        kept = [w for w in words if _keep(w, stopwords, allowlist, mode, min_length)]
        counts.update(kept)
        reports.update(set(kept))
    if fold_plurals:
        _fold_plurals(counts, reports)
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    frame = pd.DataFrame(rows, columns=["word", "count"])
    frame["reports"] = [reports[w] for w in frame["word"]]
    return frame.astype({"word": str, "count": "int64", "reports": "int64"})


def write_word_frequencies(
    freqs, out_dir: str | Path, top_k: int = 100, chart_top_n: int = 30
) -> tuple[Path, Path]:
    """Write the top ``top_k`` words as ``word_frequencies.csv`` and a bar chart of the top ``chart_top_n``.

    Returns:
        tuple[Path, Path]: the CSV and PNG paths.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless clusters; never opens a window
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    top = freqs.head(top_k)
    csv_path, png_path = out_dir / "word_frequencies.csv", out_dir / "word_frequencies.png"
    top.to_csv(csv_path, index=False)
    shown = top.head(chart_top_n)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(shown) + 1)))
    ax.barh(shown["word"][::-1], shown["count"][::-1], color="#4c72b0")
    ax.set_xlabel("occurrences in reports")
    ax.set_title(f"Top {len(shown)} medical words ({int(freqs['count'].sum())} kept tokens)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    logger.info("wrote %d words to %s and %s", len(top), csv_path, png_path)
    return csv_path, png_path
