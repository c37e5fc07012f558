"""The comparison as a reader sees it: a Markdown and an HTML report and a Pareto plot.

Strings and a PNG only; the caller decides where they go (storage, a Prefect
artifact, MLflow). The HTML embeds the plot, so the one file is the report.

Order, so the answer comes first: the recommendation; the changes against the
base with their 95% intervals, verdict column first; the scores with standard
errors and n; every run's checks with advice; how to read it (the rule, the
tolerance, the statistics); the plot. Column headers say what a number is
(``domain ROUGE-L (n=40)``, ``MMLU acc (n=171)``).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Union

from mixtune.eval import stats
from mixtune.eval.compare import RULE, Comparison, metric_label

# A report is a list of blocks, rendered to Markdown or HTML.
Block = Union[tuple[str, str], tuple[str, list[str], list[list[str]]], tuple[str, list[str]]]


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _header(comparison: Comparison, metric: str, label: str | None = None) -> str:
    """``"MMLU acc (n=171)"``: n is the paired items behind the metric's changes (the base's count without runs)."""
    n = comparison.n(metric)
    if n is None:
        column = "domain_n" if metric == comparison.domain_metric else f"{metric} n"
        counts = comparison.table[column].drop_nulls().to_list() if column in comparison.table.columns else []
        n = max(counts) if counts else None
    return f"{label or metric_label(metric)}" + (f" (n={n})" if n else "")


def _interval_cell(change: stats.PairedChange | None) -> str:
    """``"+0.030 [-0.010, +0.070]"``: the change and its 95% interval."""
    if change is None:
        return "-"
    if not change.has_interval:
        return f"{change.delta:+.3f} (no interval)"
    return f"{change.delta:+.3f} [{change.ci_low:+.3f}, {change.ci_high:+.3f}]"


def recommendation_line(comparison: Comparison) -> str:
    return comparison.recommendation.sentence


def changes_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Verdict first, then each change with its interval; one row per tuned run."""
    metrics = comparison.general_metrics
    header = ["run", "verdict", _header(comparison, comparison.domain_metric),
              *(_header(comparison, m) for m in metrics),
              f"general change (mean of {len(metrics)})" if metrics else "general change", "Pareto front"]
    rows = []
    for name, changes in comparison.changes.items():
        shipped = comparison.recommendation.kind == "ship" and comparison.recommendation.run == name
        rows.append([name + (" (recommended)" if shipped else ""), comparison.verdicts[name],
                     _interval_cell(changes[comparison.domain_metric]),
                     *(_interval_cell(changes.get(m)) for m in metrics), _interval_cell(changes["general"]),
                     "yes" if name in comparison.pareto_front else ""])
    return header, rows


def scores_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Every run's scores as ``value ± standard error``, base first."""
    metrics = [*comparison.general_metrics, *comparison.info_metrics]
    header = ["run", _header(comparison, comparison.domain_metric), *(_header(comparison, m) for m in metrics)]

    def cell(value: float | None, se: float | None) -> str:
        return _num(value) + ("" if se is None or math.isnan(se) else f" ± {se:.3f}")

    rows = []
    for row in comparison.table.iter_rows(named=True):
        label = row["run"] + (" (base)" if row["is_base"] and row["run"] != "base" else "")
        rows.append([label, cell(row["domain"], row["domain_se"]),
                     *(cell(row[m], row[f"{m} se"]) for m in metrics)])
    return header, rows


def score_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One flat row per run for a table view (Prefect): run, verdict, each score, each change with its interval."""
    scores_header, scores = scores_table(comparison)
    changes_header, changes = changes_table(comparison)
    by_run = {row[0].removesuffix(" (recommended)"): row for row in changes}
    rows = []
    for score_row, name in zip(scores, comparison.table["run"].to_list()):
        change_row = by_run.get(name)
        row = {"run": score_row[0], "verdict": change_row[1] if change_row else "base"}
        row |= dict(zip(scores_header[1:], score_row[1:]))
        row |= {(h if h.startswith("general change") else f"change in {h}"): (change_row[i + 2] if change_row else "-")
                for i, h in enumerate(changes_header[2:-1])}
        rows.append(row)
    return rows


def check_lines(comparison: Comparison) -> list[tuple[str, list[str]]]:
    """Per run: every failed or inconclusive check with its advice, then the checks it passed."""
    out = []
    for name, checks in comparison.checks.items():
        lines = [f"{c.heading}: {c.finding}. Next: {c.advice}." for c in checks if not c.passed]
        passed = [f"{metric_label(c.metric)} {c.outcome}" for c in checks if c.passed]
        if passed:
            lines.append("passed: " + ", ".join(passed) + ".")
        out.append((f"{name}: {comparison.verdicts[name]}", lines))
    return out


def reading_notes(comparison: Comparison) -> list[str]:
    gain = comparison.domain_target - (comparison.table["domain"][0] if comparison.table.height else 0.0)
    notes = [
        f"Rule: {RULE}",
        f"Tolerance: {comparison.tolerance:g} (absolute, on 0-1 scores). Domain target: "
        f"{comparison.domain_target:.3f} ({metric_label(comparison.domain_metric)}, a gain of {gain:+.3f}).",
        f"Verdict metrics: {', '.join(metric_label(m) for m in comparison.general_metrics) or 'none'}"
        + (f"; shown only: {', '.join(metric_label(m) for m in comparison.info_metrics)}"
           if comparison.info_metrics else "") + ".",
        "Changes are paired: base and tuned answer the same items. Intervals are 95% percentile bootstrap "
        f"intervals over items, the level expanded for small n ({stats.RESAMPLES:,} resamples, seed {stats.SEED}; "
        "Efron & Tibshirani 1993, Koehn 2004, Hesterberg 2015); where no item varied, the change ±3/n (rule of "
        "three). General change is the equal-weight mean of the verdict metrics' changes, its interval from "
        "resampling each benchmark's items separately. Scores show ± one standard error; n counts items.",
        f"Pareto front (domain gain vs general change): {', '.join(comparison.pareto_front) or 'none'}.",
        *comparison.notes,
    ]
    return notes


def blocks(comparison: Comparison, *, title: str, pareto_png: str | None) -> list[Block]:
    changes_header, changes_rows = changes_table(comparison)
    scores_header, scores_rows = scores_table(comparison)
    out: list[Block] = [("h1", title), ("strong", recommendation_line(comparison))]
    if changes_rows:
        out += [("h2", "Changes against the base (95% CI)"), ("table", changes_header, changes_rows)]
    out += [("h2", "Scores (± standard error)"), ("table", scores_header, scores_rows)]
    if comparison.checks:
        out.append(("h2", "Checks per run"))
        for heading, lines in check_lines(comparison):
            out += [("h3", heading), ("ul", lines)]
    out += [("h2", "How to read this"), ("ul", reading_notes(comparison))]
    if pareto_png:
        out.append(("img", pareto_png))
    return out


def render_markdown(comparison: Comparison, *, title: str = "mixtune: base vs tuned",
                    pareto_png: str | None = "pareto.png") -> str:
    """A Markdown report; ``pareto_png`` is the image path to link, None for no image."""
    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    parts: list[str] = []
    for block in blocks(comparison, title=title, pareto_png=pareto_png):
        kind = block[0]
        if kind == "table":
            _, header, rows = block
            parts += [line(header), line(["---"] * len(header)), *(line(r) for r in rows), ""]
        elif kind == "ul":
            parts += [*(f"- {item}" for item in block[1]), ""]
        elif kind == "img":
            parts += [f"![Pareto: domain gain vs general change]({block[1]})", ""]
        elif kind == "strong":
            parts += [f"**{block[1]}**", ""]
        else:
            parts += ["#" * int(kind[1]) + " " + block[1], ""]
    return "\n".join(parts).rstrip("\n") + "\n"


def render_html(comparison: Comparison, *, title: str = "mixtune: base vs tuned",
                pareto_png: str | Path | None = None) -> str:
    """A self-contained HTML page; the PNG at ``pareto_png``, if given, is embedded."""
    esc = html.escape
    body = []
    for block in blocks(comparison, title=title, pareto_png=str(pareto_png) if pareto_png else None):
        kind = block[0]
        if kind == "table":
            _, header, rows = block
            head = "".join(f"<th>{esc(h)}</th>" for h in header)
            cells = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{cells}\n</tbody></table>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block[1]) + "</ul>")
        elif kind == "img":
            encoded = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            body.append(f'<img alt="Pareto: domain gain vs general change" src="data:image/png;base64,{encoded}">')
        elif kind == "strong":
            body.append(f'<p class="recommendation"><strong>{esc(block[1])}</strong></p>')
        else:
            body.append(f"<{kind}>{esc(block[1])}</{kind}>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;max-width:80em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".recommendation{font-size:1.15em}</style>"
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def pareto_figure(comparison: Comparison):
    """The Pareto plot as a matplotlib Figure (the caller closes it): one point per run at
    (domain gain, general change) with 95% error bars, the base at the origin, the front joined."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.2), dpi=100)
    domain = metric_label(comparison.domain_metric)
    tol = comparison.tolerance
    ax.axhspan(-tol, tol, color="0.92", zorder=0, label=f"general change within the tolerance ±{tol:g}")
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    base_domain = comparison.table["domain"][0] if comparison.table.height else 0.0
    ax.axvline(comparison.domain_target - base_domain, color="tab:green", lw=0.8, ls="--", label="domain target")

    def err(c: stats.PairedChange) -> list[list[float]] | None:
        return [[c.delta - c.ci_low], [c.ci_high - c.delta]] if c.has_interval else None

    for name, changes in comparison.changes.items():
        gain, general = changes[comparison.domain_metric], changes["general"]
        color = "tab:blue" if name in comparison.pareto_front else "tab:gray"
        ax.errorbar(gain.delta, general.delta, xerr=err(gain), yerr=err(general), fmt="o", color=color,
                    ecolor=color, elinewidth=1, capsize=3, markersize=7, zorder=3)
        shipped = comparison.recommendation.kind == "ship" and comparison.recommendation.run == name
        # A run that fails a check says which, so a point inside the band never reads as a pass.
        failed = any(not c.passed for c in comparison.checks.get(name, []))
        verdict = comparison.verdicts.get(name, "")
        note = f"\n{verdict[:57] + '...' if len(verdict) > 60 else verdict}" if failed else ""
        ax.annotate(name + (" (recommended)" if shipped else "") + note, (gain.delta, general.delta),
                    textcoords="offset points", xytext=(6, 6), fontsize=8)
    if comparison.pareto_front:
        front = sorted((comparison.points[n] for n in comparison.pareto_front), key=lambda p: p[0])
        ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:blue", lw=1, label="Pareto front")
    ax.scatter([0], [0], marker="*", s=180, color="tab:red", zorder=4, label=f"{comparison.base_name} model")
    ax.set_xlabel(f"Domain gain: change in {domain} against the base model")
    ax.set_ylabel("General change: mean change of general benchmark scores")
    ax.set_title("What each mix gains on the domain and keeps in general (95% intervals)", fontsize=10)
    ax.margins(x=0.15, y=0.15)  # room for the run names beside the points
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def plot_pareto(comparison: Comparison, path: str | Path) -> Path:
    """``pareto_figure`` saved as a PNG at ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = pareto_figure(comparison)
    import matplotlib.pyplot as plt  # after pareto_figure chose the Agg backend

    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
