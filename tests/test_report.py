"""The report renders every run and verdict; the Pareto PNG is a real image."""

from __future__ import annotations

import base64

import pytest

from mixtune.eval.compare import BOTH_IMPROVED, GENERAL_DEGRADED, RunScores, compare_runs
from mixtune.eval.report import plot_pareto, render_html, render_markdown

BASE = RunScores("base", 0.30, {"mmlu/acc": 0.50, "ifeval/prompt_level_strict_acc": 0.40, "mmlu_medical/acc": 0.5})


@pytest.fixture
def comparison():
    runs = [
        RunScores("d30", 0.40, {"mmlu/acc": 0.55, "ifeval/prompt_level_strict_acc": 0.45, "mmlu_medical/acc": 0.6}),
        RunScores("mix<90>", 0.50, {"mmlu/acc": 0.40, "ifeval/prompt_level_strict_acc": 0.40, "mmlu_medical/acc": 0.7}),
    ]
    return compare_runs(BASE, runs)


def test_markdown_has_a_row_per_run_with_deltas_verdicts_and_the_front(comparison):
    text = render_markdown(comparison)
    lines = text.splitlines()
    assert lines[0] == "# mixtune: base vs tuned"
    assert lines[2] == ("| run | domain | ifeval/prompt_level_strict_acc | mmlu/acc | mmlu_medical/acc | "
                        "general retention | verdict | Pareto |")
    assert lines[4] == "| base | 0.300 | 0.400 | 0.500 | 0.500 | - | base |  |"
    assert lines[5] == (f"| d30 | 0.400 (+0.100) | 0.450 (+0.050) | 0.550 (+0.050) | 0.600 (+0.100) | +0.050 | "
                        f"{BOTH_IMPROVED} | yes |")
    assert lines[6].startswith("| mix<90> | 0.500 (+0.200) | 0.400 (+0.000) | 0.400 (-0.100) |")
    assert GENERAL_DEGRADED in lines[6] and lines[6].endswith("| yes |")
    assert "- Pareto front (domain gain vs general retention): mix<90>, d30." in lines
    assert text.rstrip().endswith("![Pareto: domain gain vs general retention](pareto.png)")


def test_pareto_png_is_written_and_embedded_in_the_html(comparison, tmp_path):
    png = plot_pareto(comparison, tmp_path / "plots" / "pareto.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    page = render_html(comparison, pareto_png=png)
    assert base64.b64encode(data).decode() in page
    assert "<td>mix&lt;90&gt;</td>" in page and "mix<90>" not in page  # names are escaped
    assert page.count("<tr>") == 1 + 3  # header + base + two runs
    assert f"<td>{BOTH_IMPROVED}</td>" in page


def test_html_without_plot_has_no_image(comparison):
    assert "<img" not in render_html(comparison)
