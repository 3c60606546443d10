"""Clinical covariates -> one context sentence (paper section 3, "Clinical data").

The sentence is placed before the image tokens of every prompt. Templates are YAML files read into
:class:`ctvl.config.ClinicalTextConfig` (``configs/clinical/{lung,inspect,synthetic}.yaml``), so a
template for any CSV is written without code: parts with ``{placeholder}`` names, per-placeholder
column / value map / number format / unit, and conditions. Missing values drop their piece or part,
never leaving "nan" or a dangling comma.

Entry points:
    load_clinical_template(path) -> ClinicalTextConfig
    bundled_template(name) -> ClinicalTextConfig   (curated, for the five scikit-survival sets)
    automatic_template(columns) -> ClinicalTextConfig   (any other table, from its column names)
    render_clinical_text(row, cfg) -> str
    build_clinical_texts(frame, cfg) -> pandas.Series

Example:
    >>> from ctvl.config import ClinicalTextConfig
    >>> cfg = ClinicalTextConfig(parts=(("A {age}-year-old", "{sex}"), "pulse {pulse} bpm"),
    ...                          fields={"pulse": {"format": ".1f"}, "sex": {"map": {"F": "female"}}})
    >>> render_clinical_text({"age": 81, "sex": "F", "pulse": 65}, cfg)
    'An 81-year-old female, pulse 65.0 bpm.'
    >>> render_clinical_text({"age": float("nan"), "sex": "F", "pulse": None}, cfg)
    'Female.'
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from ctvl.config import ClinicalField, ClinicalTextConfig, normalise_key

_FORMATTER = string.Formatter()
# "a" before a vowel sound: vowels, and numbers read "eight..", "eleven", "eighteen".
_ARTICLE = re.compile(r"\b([Aa]) (?=(?:[aeiouAEIOU]|8|11(?!\d)|18(?!\d)|11-|18-))")


def load_clinical_template(path: str | Path) -> ClinicalTextConfig:
    """Read a clinical-text YAML; placeholders and format specs are checked (errors name the file)."""
    from ctvl.config import load_config

    try:
        cfg = load_config(ClinicalTextConfig, path)
        check_template(cfg)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None
    return cfg


TEMPLATES = Path(__file__).resolve().parents[1] / "resources" / "tabular_templates"
"""Curated templates of the bundled survival sets (``<name>.yaml``, names as in ``ctvl.data.tabular``)."""


def bundled_template(name: str) -> ClinicalTextConfig:
    """The curated template of a bundled data set (``gbsg2``, ``whas500``, ``aids``, ``flchain``, ``veterans``)."""
    path = TEMPLATES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
        raise ValueError(f"no curated template for data set {name!r}; known: {known}")
    return load_clinical_template(path)


def _label(column: str) -> str:
    """Column name -> words: ``"Age_in_years"`` -> ``"age in years"``, ``"flc.grp"`` -> ``"flc grp"``."""
    words = re.sub(r"([a-z])([A-Z])", r"\1 \2", column)
    return re.sub(r"[\s_.\-]+", " ", words).strip().lower() or column


def automatic_template(columns, name: str = "automatic") -> ClinicalTextConfig:
    """A template naming every column: ``"<label> is {value}"`` parts, e.g. "Age is 54, tsize is 20.".

    Each placeholder is ``c<i>`` (any column name works, even one that is no identifier); numbers are
    written with up to 4 significant digits.
    """
    columns = [str(c) for c in columns]
    if not columns:
        raise ValueError("automatic_template needs at least one column")
    fields = {f"c{i}": {"column": c, "format": ".4g"} for i, c in enumerate(columns)}
    parts = tuple(f"{_label(c)} is {{c{i}}}" for i, c in enumerate(columns))
    return ClinicalTextConfig(name=name, parts=parts, fields=fields, fix_articles=False)


def placeholders(piece: str) -> list[str]:
    """Names of the ``{placeholders}`` in one template piece; format specs in the piece are refused."""
    names = []
    for _, name, spec, conv in _FORMATTER.parse(piece):
        if name is None:
            continue
        if not name or spec or conv:
            raise ValueError(f"placeholder in {piece!r} must be a plain {{name}}; put formats in `fields`")
        names.append(name)
    return names


def check_template(cfg: ClinicalTextConfig) -> None:
    """Raise ``ValueError`` for a template without parts or with malformed placeholders."""
    if not cfg.parts:
        raise ValueError(f"clinical template {cfg.name!r} has no `parts`")
    for part in cfg.parts:
        for piece in part if isinstance(part, tuple) else (part,):
            placeholders(piece)


def template_columns(cfg: ClinicalTextConfig) -> list[str]:
    """Every column the template reads (placeholders, their ``column`` and ``only_if`` keys)."""
    names = [
        n
        for part in cfg.parts
        for piece in (part if isinstance(part, tuple) else (part,))
        for n in placeholders(piece)
    ]
    cols = []
    for name in dict.fromkeys(names):
        spec = cfg.fields.get(name, ClinicalField())
        cols += [spec.column or name, *spec.only_if]
    return list(dict.fromkeys(cols))


def _is_missing(value: Any, cfg: ClinicalTextConfig) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:  # pandas.NA / NaT and numpy NaN scalars
        import pandas as pd

        if value is pd.NA or value is pd.NaT or (not isinstance(value, str) and bool(pd.isna(value))):
            return True
    except (TypeError, ValueError):
        pass
    return isinstance(value, str) and value.strip().lower() in cfg.missing_values


def _as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar
        return _as_number(value.item())
    return None


def _format_value(value: Any, spec: ClinicalField) -> str:
    number = _as_number(value)
    if number is None and isinstance(value, str) and (spec.format or spec.scale != 1.0 or spec.offset != 0.0):
        try:  # a CSV read as text: "18" must still become "18.0" under format ".1f"
            number = float(value.strip())
        except ValueError:
            pass
    if number is None:
        return str(value).strip() + spec.unit
    number = number * spec.scale + spec.offset
    if spec.format:
        text = format(int(round(number)) if spec.format[-1:] in "dxXbnoc" else number, spec.format)
    elif number.is_integer():
        text = str(int(number))
    else:
        text = format(number, "g")
    return text + spec.unit


def _conditions_hold(row: Mapping, spec: ClinicalField, cfg: ClinicalTextConfig) -> bool:
    for col, allowed in spec.only_if.items():
        value = row.get(col)
        if _is_missing(value, cfg) or normalise_key(value) not in allowed:
            return False
    return True


def render_field(row: Mapping, name: str, cfg: ClinicalTextConfig) -> Optional[str]:
    """Rendered value of placeholder ``name`` for ``row``, or None when missing."""
    spec = cfg.fields.get(name, ClinicalField())
    value = row.get(spec.column or name)
    if _is_missing(value, cfg) or not _conditions_hold(row, spec, cfg):
        return None
    if spec.map:
        key = normalise_key(value)
        if key in spec.map:
            value = spec.map[key]
            if value is None or (isinstance(value, str) and not value.strip()):
                return None
    return _format_value(value, spec)


def _render_piece(piece: str, row: Mapping, cfg: ClinicalTextConfig) -> tuple[Optional[str], bool]:
    """-> (text or None when a placeholder is missing, whether the piece holds any placeholder)."""
    names = placeholders(piece)
    values = {n: render_field(row, n, cfg) for n in names}
    if any(v is None for v in values.values()):
        return None, bool(names)
    return piece.format_map(values), bool(names)


def _render_part(part, row: Mapping, cfg: ClinicalTextConfig) -> Optional[str]:
    pieces = part if isinstance(part, tuple) else (part,)
    rendered = [_render_piece(p, row, cfg) for p in pieces]
    if any(has_value for _, has_value in rendered) and not any(t is not None and v for t, v in rendered):
        return None  # every value-bearing piece is missing: drop the literal words with them
    text = " ".join(t.strip() for t, _ in rendered if t is not None and t.strip())
    return text or None


def render_clinical_text(row: Mapping, cfg: ClinicalTextConfig) -> str:
    """One row of clinical data -> the context sentence ("" when every value is missing).

    Args:
        row: mapping of column -> value (a ``dict`` or a ``pandas.Series``).
        cfg: the cohort's template.

    Returns:
        str: e.g. ``"64 year-old male former smoker lung cancer patient, stage 1, T stage is T4, ..."``.
    """
    row = row if isinstance(row, Mapping) else dict(row)
    parts = [p for p in (_render_part(part, row, cfg) for part in cfg.parts) if p]
    if not parts:
        return ""
    text = re.sub(r"\s+", " ", cfg.separator.join(parts)).strip()
    if cfg.fix_articles:
        text = _ARTICLE.sub(lambda m: "An " if m.group(1) == "A" else "an ", text)
    if cfg.capitalize:
        text = text[:1].upper() + text[1:]
    return text if text.endswith(cfg.end) else text + cfg.end


def build_clinical_texts(frame, cfg: ClinicalTextConfig):
    """Render every row of a ``pandas.DataFrame``; returns a ``Series`` of sentences on the same index."""
    import pandas as pd

    missing = sorted(set(template_columns(cfg)) - set(frame.columns))
    if missing:
        raise ValueError(
            f"clinical template {cfg.name!r}: columns {missing} not in the table {list(frame.columns)}"
        )
    return pd.Series([render_clinical_text(row, cfg) for row in frame.to_dict("records")], index=frame.index)
