"""The utility report of ``ctvl synth-tabular report``: figures (PNG) and one HTML page, real vs synthetic.

Entry points: :func:`plot_marginals` (histograms of discrete columns, KDEs of numeric ones),
:func:`plot_correlations` (real, synthetic and their difference), :func:`plot_forest` (CoxPH log-HRs with 95 %
CIs per table), :func:`plot_km` (Kaplan-Meier curves per table) and :func:`render_synth_report_html`. The
numbers come from :func:`ctvl.tabgen.utility.assess_synthetic`.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from ctvl.data.tabular import column_kind
from ctvl.infer.report import figure_png, html_page, img_tag, new_figure, step_curve
from ctvl.survival.curves import kaplan_meier
from ctvl.tabgen.utility import discrete_levels

__all__ = ["plot_correlations", "plot_forest", "plot_km", "plot_marginals", "render_synth_report_html"]

_REAL = "#c9a227"  # the paper's gold for real data


def plot_marginals(real: pd.DataFrame, synthetic: pd.DataFrame, label: str) -> bytes:
    """One panel per covariate: side-by-side level shares (discrete) or KDEs (numeric), real vs ``label``."""
    from scipy.stats import gaussian_kde

    names = list(real.columns)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = new_figure(3.2 * cols, 2.4 * rows)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        a, b = real[name], synthetic[name]
        if column_kind(a) in ("numeric", "integer") and a.nunique() > 2:
            x = np.linspace(np.nanmin(a), np.nanmax(a), 200)
            for values, colour, what in ((a, _REAL, "real"), (b, "C4", label)):
                values = values.dropna().to_numpy(np.float64)
                if values.size > 1 and values.std() > 0:
                    ax.plot(x, gaussian_kde(values)(x), color=colour, label=what)
        else:
            pa = discrete_levels(a).value_counts(normalize=True)
            pb = discrete_levels(b).value_counts(normalize=True).reindex(pa.index, fill_value=0)
            pos = np.arange(pa.size)
            ax.bar(pos - 0.2, pa.to_numpy(), 0.4, color=_REAL, label="real")
            ax.bar(pos + 0.2, pb.to_numpy(), 0.4, color="C4", label=label)
            ax.set_xticks(pos, [str(v) for v in pa.index], fontsize=7, rotation=45 if pa.size > 4 else 0)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7)
    return figure_png(fig)


def plot_correlations(real: np.ndarray, synthetic: np.ndarray, names: list[str], label: str) -> bytes:
    """Correlation matrices (d, d) of the real and synthetic design columns and their difference."""
    fig = new_figure(15, 5)
    for k, (matrix, title) in enumerate(((real, "real"), (synthetic, label), (synthetic - real, f"{label} - real"))):
        ax = fig.add_subplot(1, 3, k + 1)
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(names)), names, fontsize=6, rotation=90)
        ax.set_yticks(range(len(names)), names if k == 0 else [], fontsize=6)
    fig.colorbar(image, ax=fig.axes, shrink=0.7)
    return figure_png(fig)


def plot_forest(rows_by_table: dict[str, list[dict]]) -> bytes:
    """Log-HR and 95 % CI per covariate, one marker per table (``"real"`` first); rows from
    :func:`ctvl.tabgen.utility.compare_hazard_ratios` (``coef_real``, ``lower_synthetic``, ...). The x range is
    three times the span of the real intervals."""
    first = next(iter(rows_by_table.values()))
    names = [r["covariate"] for r in first]
    series = {"real": [(r["coef_real"], r["lower_real"], r["upper_real"]) for r in first]}
    series.update({label: [(r["coef_synthetic"], r["lower_synthetic"], r["upper_synthetic"]) for r in rows]
                   for label, rows in rows_by_table.items()})
    fig = new_figure(7, 0.45 * len(names) + 1.5)
    ax = fig.add_subplot()
    offsets = np.linspace(-0.3, 0.3, len(series))
    for k, (label, values) in enumerate(series.items()):
        coef, lower, upper = (np.asarray(v, np.float64) for v in zip(*values))
        y = np.arange(len(names)) + offsets[k]
        ax.errorbar(coef, y, xerr=[coef - lower, upper - coef], fmt="o", ms=3, capsize=2, label=label,
                    color=_REAL if label == "real" else f"C{k}")
    _, lower, upper = (np.asarray(v, np.float64) for v in zip(*series["real"]))
    lo, hi = np.nanmin(lower), np.nanmax(upper)
    ax.set_xlim(lo - (hi - lo), hi + (hi - lo))  # a separated synthetic fit (CI of 1e4) would flatten the rest
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("log hazard ratio (95 % CI)")
    ax.legend(fontsize=7)
    return figure_png(fig)


def plot_km(tables: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Kaplan-Meier curves, one per ``label -> (event, time)``; real tables in gold shades."""
    fig = new_figure()
    ax = fig.add_subplot()
    for k, (label, (event, time)) in enumerate(tables.items()):
        t, s = kaplan_meier(event, time)
        real = label.startswith("real")
        step_curve(ax, t, s, label=label, lw=2 if real else 1.2,
                color=_REAL if label == "real (train)" else ("#8a6d0b" if real else f"C{k}"), ls="-" if real else "--")
    ax.set(xlabel="time", ylabel="survival", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return figure_png(fig)


def _row(label: str, m: dict) -> str:
    hr, cells = m["hazard_ratios"], [html.escape(label)]

    def fmt(value, digits=3):
        return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"

    cells += [fmt(hr["mean_abs_log_hr_diff"]), fmt(hr["sign_agreement_significant"], 2),
              fmt(hr["real_inside_synthetic_ci"], 2)]
    if "utility" in m:
        u = next(iter(m["utility"].values()))
        p, km = m["privacy"], m["km_vs_holdout"]
        cells += [fmt(u["tstr"]["c_index"]), fmt(u["trtr"]["c_index"]), fmt(u["tstr"]["ibs"]),
                  fmt(m["augmentation"]["c_diff"]), fmt(km["logrank_p"]), fmt(km["km_mean_abs_gap"]),
                  fmt(p["dcr_synthetic_p5"]), fmt(p["dcr_holdout_p5"]), fmt(p["membership_auc"]),
                  fmt(p["exact_copies"])]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_HEAD = ["table", "mean |Δ log HR|", "same sign (p<0.05)", "real in synthetic CI", "TSTR C", "TRTR C", "TSTR IBS",
         "augmented ΔC", "KM log-rank p (vs held-out)", "KM mean gap", "DCR p5 synthetic", "DCR p5 held-out",
         "membership AUC", "exact copies"]


def render_synth_report_html(metrics: dict, figures: dict[str, bytes], title: str = "ctvl synthetic-table report"
                             ) -> str:
    """One page: the summary table (one row per synthetic table) and the figures (``name -> PNG``)."""
    tables = metrics["tables"]
    with_holdout = any("utility" in m for m in tables.values())
    head = _HEAD if with_holdout else _HEAD[:4]
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Real training rows: {metrics['n_train']}; held-out real rows: {metrics.get('n_holdout', 0)}. "
            "Hazard ratios: CoxPH (Efron ties) in one design fitted on the real rows; utility and privacy on the "
            "held-out rows.</p>",
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join(_row(label, m) for label, m in tables.items()) + "</table>"]
    for name, png in figures.items():
        body.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>{img_tag(png, name)}")
    notes = metrics.get("notes") or []
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return html_page(title, "\n".join(body))
