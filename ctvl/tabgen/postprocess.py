"""Post-processing of generated covariates: back to the real table's ranges, whole numbers and dtypes.

:class:`ColumnBounds` learns, per numeric covariate of a real table, its observed range and whether every
observed value is a whole number (GBSG2's ages, node counts and receptor levels are stored as floats but
are integers); :meth:`ColumnBounds.restore` clips generated values to the range, rounds the whole-number
columns and casts every column back to the real dtype (categorical levels included). Categories and 0/1
columns come out of :meth:`ctvl.data.tabular.TabularEncoder.inverse_transform` already; this adds what the
encoder does not know.

    >>> import pandas as pd
    >>> real = pd.DataFrame({"age": [40.0, 55.0, 71.0], "dose": [0.5, 1.25, 2.0]})
    >>> bounds = ColumnBounds().fit(real)
    >>> bounds.restore(pd.DataFrame({"age": [38.2, 60.6, 90.0], "dose": [0.1, 1.3, 2.2]})).to_dict("list")
    {'age': [40.0, 61.0, 71.0], 'dose': [0.5, 1.3, 2.0]}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ctvl.data.tabular import column_kind, restore_dtype

__all__ = ["ColumnBounds"]


class ColumnBounds:
    """Per covariate of the real table: kind, dtype, categories, and for numeric columns min, max, whole."""

    def __init__(self):
        self.columns_: dict[str, dict[str, Any]] = {}

    def fit(self, real: pd.DataFrame) -> ColumnBounds:
        """Learn from the real covariates ``real`` (n, p)."""
        self.columns_ = {}
        for name in real.columns:
            col = real[name]
            spec: dict[str, Any] = {"kind": column_kind(col), "dtype": str(col.dtype)}
            if isinstance(col.dtype, pd.CategoricalDtype):
                spec.update(categories=[c.item() if isinstance(c, np.generic) else c for c in col.cat.categories],
                            ordered=bool(col.cat.ordered))
            elif spec["kind"] in ("numeric", "integer"):
                values = col.to_numpy(np.float64, na_value=np.nan)
                finite = values[np.isfinite(values)]
                spec.update(min=float(finite.min()), max=float(finite.max()),
                            whole=bool(np.all(finite == np.round(finite))))
            self.columns_[str(name)] = spec
        return self

    def restore(self, generated: pd.DataFrame) -> pd.DataFrame:
        """``generated`` with the real columns in the real order: numeric values clipped to the real range and
        rounded where the real ones are whole; dtypes and categorical levels as in the real table; NaN kept."""
        missing = [c for c in self.columns_ if c not in generated.columns]
        if missing:
            raise ValueError(f"generated table lacks the real columns {missing}")
        out = {}
        for name, spec in self.columns_.items():
            col = generated[name]
            if "min" in spec:
                values = np.clip(pd.to_numeric(col, errors="coerce").to_numpy(np.float64, na_value=np.nan),
                                 spec["min"], spec["max"])
                col = pd.Series(np.round(values) if spec["whole"] else values)
            out[name] = _cast(col.reset_index(drop=True), spec)
        return pd.DataFrame(out)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "ctvl.ColumnBounds", "version": 1, "columns": self.columns_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ColumnBounds:
        if state.get("format") != "ctvl.ColumnBounds" or state.get("version") != 1:
            raise ValueError(f"not a ctvl.ColumnBounds version 1 state: {state.get('format')!r}")
        bounds = cls()
        bounds.columns_ = {str(k): dict(v) for k, v in state["columns"].items()}
        return bounds


def _cast(col: pd.Series, spec: dict[str, Any]) -> pd.Series:
    """``col`` in the real dtype; levels outside the real categories raise (a generator bug, not user input)."""
    if "categories" in spec:
        values = col.astype(object).where(col.notna(), None)
        cat = pd.Categorical(values, categories=spec["categories"], ordered=spec["ordered"])
        unknown = pd.isna(cat) & col.notna().to_numpy()
        if unknown.any():
            raise ValueError(f"generated levels {sorted({str(v) for v in col[unknown]})} are not in the real "
                             f"categories {spec['categories']}")
        return pd.Series(cat)
    if spec["kind"] == "binary" and not col.isna().all():
        col = col.astype(float).round()
    return restore_dtype(col, spec["dtype"])
