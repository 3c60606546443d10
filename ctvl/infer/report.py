"""Readable outputs: per-case answer reports (Markdown + HTML), evaluation figures and ``report.html``.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas (no pyplot, no display,
thread-safe) and embedded into HTML as base64 PNG, so every report is one self-contained file.

Entry points:
    write_case_reports(records, out_dir, threshold=None, title=...) -> threshold   (``ctvl generate``)
    plot_risk_groups / plot_calibration / plot_latent -> PNG bytes               (``ctvl evaluate``)
    render_evaluation_html(metrics, figures, title) -> str
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

_CSS = """body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
.high{color:#b00020;font-weight:bold}.low{color:#1b5e20;font-weight:bold}
img{max-width:100%}.note{color:#666;font-size:.9em}"""


# ------------------------------------------------------------------------------ case reports


def summarise_cases(records: list[dict],
                    threshold: Optional[float] = None) -> tuple[list[dict], Optional[float]]:
    """Group answer records by case: ``[{case_id, risk (mean over questions), group, answers}]``, threshold.

    ``group`` is "high" when the case's risk is above ``threshold`` (default: the median case risk),
    else "low".
    """
    by_case: dict[str, list[dict]] = {}
    for r in records:
        by_case.setdefault(r["case_id"], []).append(r)
    cases = [{"case_id": c, "risk": float(np.mean([a["risk"] for a in rs])), "answers": rs}
             for c, rs in sorted(by_case.items())]
    if not cases:
        return [], threshold
    if threshold is None:
        threshold = float(np.median([c["risk"] for c in cases]))
    for c in cases:
        c["group"] = "high" if c["risk"] > threshold else "low"
    return cases, threshold


def _md_cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_case_markdown(cases: list[dict], threshold: Optional[float], title: str) -> str:
    """Markdown: one section per case with its risk group and a question/answer/risk table."""
    intro = (f"{len(cases)} case(s). Risk group: high when the mean risk over the questions is above "
             f"{threshold:.4g}." if cases else "No case answered.")
    lines = [f"# {title}", "", intro, ""]
    for c in cases:
        lines += [f"## {c['case_id']}", "", f"**Risk {c['risk']:.4g}: {c['group']} risk**", "",
                  "| Question | Answer | Risk |", "|---|---|---|"]
        lines += [f"| {_md_cell(a['question'])} | {_md_cell(a['answer']) or '(empty)'} | {a['risk']:.4g} |"
                  for a in c["answers"]]
        lines.append("")
    return "\n".join(lines)


def render_case_html(cases: list[dict], threshold: Optional[float], title: str) -> str:
    """The same content as :func:`render_case_markdown`, as one HTML page."""
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    body.append(f"<p>{len(cases)} case(s). Risk group: high when the mean risk over the questions is above "
                f"{threshold:.4g}.</p>" if cases else "<p>No case answered.</p>")
    for c in cases:
        rows = "".join(f"<tr><td>{esc(a['question'])}</td><td>{esc(a['answer']) or '<i>(empty)</i>'}</td>"
                       f"<td>{a['risk']:.4g}</td></tr>" for a in c["answers"])
        header = "<tr><th>Question</th><th>Answer</th><th>Risk</th></tr>"
        body.append(f"<h2>{esc(c['case_id'])}</h2><p>Risk {c['risk']:.4g}: <span class=\"{c['group']}\">"
                    f"{c['group']} risk</span></p><table>{header}{rows}</table>")
    return html_page(title, "\n".join(body))


def write_case_reports(records: list[dict], out_dir: str | Path, threshold: Optional[float] = None,
                       title: str = "ctvl answers") -> Optional[float]:
    """Write ``report.md`` and ``report.html`` under ``out_dir``; returns the threshold used."""
    cases, threshold = summarise_cases(records, threshold)
    out = Path(out_dir)
    (out / "report.md").write_text(render_case_markdown(cases, threshold, title), encoding="utf-8")
    (out / "report.html").write_text(render_case_html(cases, threshold, title), encoding="utf-8")
    return threshold


# ------------------------------------------------------------------------------ figures


def new_figure(width: float = 6.0, height: float = 4.5):
    """A matplotlib Figure (constrained layout, 100 dpi) drawn off-screen: no pyplot state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a Figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def step_curve(ax, times: np.ndarray, surv: np.ndarray, **kw) -> None:
    """A survival step curve from (0, 1): ``times`` (T,) and ``surv`` (T,) right-continuous."""
    ax.step(np.r_[0.0, times], np.r_[1.0, surv], where="post", **kw)


def plot_risk_groups(groups: dict, time_unit: str = "") -> bytes:
    """Kaplan-Meier curves of the high/low risk groups with the log-rank p-value (the paper's Fig. 3).

    Args:
        groups: :func:`ctvl.survival.curves.risk_groups` output.
        time_unit: axis label suffix, e.g. "months".
    """
    fig = new_figure()
    ax = fig.add_subplot()
    step_curve(ax, *groups["km_low"], color="#1b5e20", label=f"low risk (n={groups['n_low']})")
    step_curve(ax, *groups["km_high"], color="#b00020", label=f"high risk (n={groups['n_high']})")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"time{f' ({time_unit})' if time_unit else ''}")
    ax.set_ylabel("survival probability")
    ax.set_title(f"Risk groups (median split): log-rank p = {groups['p_value']:.3g}", fontsize=11)
    ax.legend(loc="lower left")
    return figure_png(fig)


def plot_calibration(predicted: np.ndarray, observed: np.ndarray, counts: np.ndarray,
                     horizon: float) -> bytes:
    """Predicted vs Kaplan-Meier observed event probability by t = ``horizon``, one point per risk bin."""
    fig = new_figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfect calibration")
    ax.plot(predicted, observed, marker="o", color="#0d47a1", label="risk bins")
    for x, y, n in zip(predicted, observed, counts):
        ax.annotate(str(int(n)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted P(event by t={horizon:.4g})")
    ax.set_ylabel(f"observed (Kaplan-Meier) P(event by t={horizon:.4g})")
    ax.legend(loc="upper left")
    return figure_png(fig)


def plot_latent(xy: np.ndarray, risk: np.ndarray, time: np.ndarray, event: np.ndarray, method: str,
                what: str = "z_surv", risk_label: str = "predicted risk") -> bytes:
    """2-D map of embeddings ``what`` coloured by risk and by observed time (x = censored)."""
    fig = new_figure(11.0, 4.8)
    for k, (values, label, cmap) in enumerate(((risk, risk_label, "coolwarm"),
                                                (time, "observed time", "viridis"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for mask, marker in ((event, "o"), (~event, "x")):
            sc = ax.scatter(xy[mask, 0], xy[mask, 1], c=values[mask], cmap=cmap, marker=marker, s=18,
                            vmin=values.min(), vmax=values.max())
        fig.colorbar(sc, ax=ax, label=label)
        ax.set_title(f"{method} of {what}, coloured by {label} (o event, x censored)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return figure_png(fig)


# ------------------------------------------------------------------------------ evaluation page


def plot_hazard_ratio_curves(times: np.ndarray, curves: dict[str, tuple], time_unit: str = "") -> bytes:
    """Hazard ratio over time on a log axis, one line per label with an optional band (treatment effects).

    Args:
        times: (T,) grid.
        curves: label -> ``(log_hr (T,), lower (T,) or None, upper (T,) or None)``.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    for label, (log_hr, lower, upper) in curves.items():
        line, = ax.step(times, np.exp(log_hr), where="mid", label=label)
        if lower is not None:
            ax.fill_between(times, np.exp(lower), np.exp(upper), step="mid", alpha=0.2, color=line.get_color())
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set(xlabel=f"time{f' ({time_unit})' if time_unit else ''}", ylabel="hazard ratio (treated / control)")
    ax.legend(fontsize=8)
    return figure_png(fig)


def plot_survival_by_arm(times: np.ndarray, curves: dict[str, np.ndarray], time_unit: str = "") -> bytes:
    """Mean survival curves, e.g. everyone under control / under treatment, and Kaplan-Meier per observed arm.

    Args:
        times: (T,) grid.
        curves: label -> (T,) survival probabilities (labels starting "KM" are drawn dashed).
    """
    fig = new_figure()
    ax = fig.add_subplot()
    for label, surv in curves.items():
        step_curve(ax, times, surv, label=label, ls="--" if label.startswith("KM") else "-")
    ax.set(xlabel=f"time{f' ({time_unit})' if time_unit else ''}", ylabel="survival", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return figure_png(fig)


def html_page(title: str, body: str) -> str:
    """A standalone HTML page with ctvl's report style."""
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _metric_table(rows: list[tuple[str, dict | float | None]]) -> str:
    cells = []
    for name, m in rows:
        if m is None:
            continue
        if isinstance(m, dict):
            ci = m.get("ci")
            ci_text = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci and None not in ci else "-"
            value = _fmt(m["value"])
            cells.append(f"<tr><td>{html.escape(name)}</td><td>{value}</td><td>{ci_text}</td></tr>")
        else:
            cells.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(m)}</td><td>-</td></tr>")
    header = "<tr><th>metric</th><th>value</th><th>95% CI (bootstrap)</th></tr>"
    return f"<table>{header}{''.join(cells)}</table>"


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG inlined (base64): the page needs no files beside it."""
    return f"<img alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"


_SURVIVAL_NAMES = (("harrell_c", "Harrell's C"), ("uno_c", "Uno's C"),
                   ("antolini_c", "Antolini's C (time-dependent)"), ("ibs", "integrated Brier score"))


def render_evaluation_html(metrics: dict, figures: dict[str, bytes], title: str = "ctvl evaluation") -> str:
    """One page: survival table, KM figure, calibration, language scores, latent map, notes and settings."""
    surv = metrics.get("survival", {})
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{metrics.get('n', 0)} case(s), {metrics.get('n_events', 0)} event(s); split: "
            f"{html.escape(str(metrics.get('split')))}; {metrics.get('bootstrap', {}).get('n', 0)} bootstrap "
            "resamples.</p>", "<h2>Survival</h2>",
            _metric_table([(label, surv.get(key)) for key, label in _SURVIVAL_NAMES])]
    groups = metrics.get("risk_groups")
    if groups:
        body.append(f"<p>Median split at risk {groups['threshold']:.4g}: {groups['n_high']} high, "
                    f"{groups['n_low']} low; log-rank p = {groups['p_value']:.3g}.</p>")
    for key, caption in (("km", "Kaplan-Meier curves"), ("calibration", "Calibration")):
        if key in figures:
            body.append(f"<h3>{caption}</h3>{img_tag(figures[key], caption)}")
    bs = metrics.get("bertscore")
    if bs:
        table = _metric_table([("BERTScore F1", bs["f1"]), ("BERTScore precision", bs["precision"]),
                               ("BERTScore recall", bs["recall"])])
        body += ["<h2>Language</h2>", table,
                 f"<p class=\"note\">{bs['n_pairs']} answer pairs; model {html.escape(bs['model'])} "
                 f"(layer {bs['num_layers']}, no baseline rescaling), loaded from "
                 f"{html.escape(bs['model_path'])}.</p>"]
    if "latent" in figures:
        body.append(f"<h2>Latent space</h2>{img_tag(figures['latent'], 'latent space')}")
    notes = metrics.get("notes") or []
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    return html_page(title, "\n".join(body))
