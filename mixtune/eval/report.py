"""The comparison as a reader sees it: a Markdown and an HTML report and a Pareto plot.

Strings and a PNG only; the caller decides where they go (storage, a Prefect
artifact, MLflow). The HTML embeds the plot, so the one file is the report.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from mixtune.eval.compare import Comparison


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by both formats: value with its delta, verdict, front mark."""
    metrics = [*comparison.general_metrics, *comparison.info_metrics]
    header = ["run", "domain", *metrics, "general retention", "verdict", "Pareto"]
    cells = []
    for row in comparison.table.iter_rows(named=True):
        base = row["is_base"]
        line = [row["run"] + (" (base)" if base and row["run"] != "base" else ""),
                _fmt(row["domain"]) + ("" if base else f" ({_fmt(row['domain_delta'], True)})")]
        for m in metrics:
            line.append(_fmt(row[m]) + ("" if base or row[m] is None else f" ({_fmt(row[f'{m} delta'], True)})"))
        line += ["-" if base else _fmt(row["general_retention"], True), row["verdict"],
                 "yes" if row["on_pareto_front"] else ""]
        cells.append(line)
    return header, cells


def _summary(comparison: Comparison) -> list[str]:
    front = ", ".join(comparison.pareto_front) or "none"
    return [
        f"Tolerance: {comparison.tolerance:g} (absolute, on 0-1 scores). Domain target: "
        f"{comparison.domain_target:.3f}.",
        f"Verdict metrics: {', '.join(comparison.general_metrics) or 'none'}"
        + (f"; shown only: {', '.join(comparison.info_metrics)}" if comparison.info_metrics else "") + ".",
        "General retention is the mean change of the verdict metrics against the base (0 = retained).",
        f"Pareto front (domain gain vs general retention): {front}.",
    ]


def render_markdown(comparison: Comparison, *, title: str = "mixtune: base vs tuned",
                    pareto_png: str | None = "pareto.png") -> str:
    """A Markdown report; ``pareto_png`` is the image path to link, None for no image."""
    header, cells = _rows(comparison)

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    parts = [f"# {title}", "", line(header), line(["---"] * len(header)), *(line(c) for c in cells), ""]
    parts += [f"- {s}" for s in _summary(comparison)]
    if pareto_png:
        parts += ["", f"![Pareto: domain gain vs general retention]({pareto_png})"]
    return "\n".join(parts) + "\n"


def render_html(comparison: Comparison, *, title: str = "mixtune: base vs tuned",
                pareto_png: str | Path | None = None) -> str:
    """A self-contained HTML page; the PNG at ``pareto_png``, if given, is embedded."""
    header, cells = _rows(comparison)
    esc = html.escape
    head_row = "".join(f"<th>{esc(h)}</th>" for h in header)
    body_rows = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in cells)
    summary = "".join(f"<li>{esc(s)}</li>" for s in _summary(comparison))
    image = ""
    if pareto_png:
        encoded = base64.b64encode(Path(pareto_png).read_bytes()).decode("ascii")
        image = f'<img alt="Pareto: domain gain vs general retention" src="data:image/png;base64,{encoded}">'
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>body{{font-family:sans-serif}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style>"
        f"</head><body>\n<h1>{esc(title)}</h1>\n<table><thead><tr>{head_row}</tr></thead>\n<tbody>\n{body_rows}\n"
        f"</tbody></table>\n<ul>{summary}</ul>\n{image}\n</body></html>\n"
    )


def plot_pareto(comparison: Comparison, path: str | Path) -> Path:
    """One point per run at (domain gain, general retention), the base marked at the origin, the front joined."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; must precede pyplot
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    try:
        tol = comparison.tolerance
        ax.axhspan(-tol, tol, color="0.92", zorder=0, label=f"general within ±{tol:g}")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.axvline(0, color="0.6", lw=0.8)
        tuned = {n: p for n, p in comparison.points.items() if n != comparison.base_name}
        for name, (gain, retention) in tuned.items():
            on_front = name in comparison.pareto_front
            ax.scatter(gain, retention, s=50, color="tab:blue" if on_front else "tab:gray", zorder=3)
            ax.annotate(name, (gain, retention), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if comparison.pareto_front:
            front = sorted((tuned[n] for n in comparison.pareto_front), key=lambda p: p[0])
            ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:blue", lw=1, label="Pareto front")
        ax.scatter([0], [0], marker="*", s=180, color="tab:red", zorder=4, label=comparison.base_name)
        ax.set_xlabel("domain gain (domain score − base)")
        ax.set_ylabel("general retention (mean Δ of general scores)")
        ax.set_title("Domain gain vs general retention")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
