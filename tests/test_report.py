"""The report opens with the recommendation, labels every number, lists every check; the plot has error bars."""

from __future__ import annotations

import base64

import pytest
from matplotlib.container import ErrorbarContainer
from test_compare import DOMAIN, base_run, tuned

from mixtune.eval.compare import RULE, compare_runs
from mixtune.eval.report import pareto_figure, plot_pareto, render_html, render_markdown, score_rows


@pytest.fixture(scope="module")
def comparison():
    base = base_run(n=200)
    runs = [tuned(base, "d100", domain_gain=0.06, flips={"mmlu/acc": -30}, domain_percent=100),
            tuned(base, "d75-math<1>", domain_gain=0.04, flips={"gsm8k/exact_match.strict-match": 5},
                  domain_percent=75, weights={"math": 1})]
    return compare_runs(base, runs)


def test_markdown_opens_with_the_recommendation_then_the_changes_with_the_verdict_first(comparison):
    lines = render_markdown(comparison).splitlines()
    assert lines[0] == "# mixtune: base vs tuned"
    assert lines[2] == f"**{comparison.recommendation.sentence}**"
    assert lines[2].startswith("**Ship d75-math<1>: domain ROUGE-L +0.040 (95% CI [")
    assert lines[4] == "## Changes against the base (95% CI)"
    assert lines[6] == ("| run | verdict | domain ROUGE-L (n=200) | ARC-Challenge acc_norm (n=200) | "
                        "GSM8K exact match (strict) (n=200) | IFEval prompt-level strict acc (n=200) | "
                        "MMLU acc (n=200) | general change (mean of 4) | Pareto front |")
    d100 = lines[8]
    # Unchanged answers on 200 items: ±3/200 (rule of three), not a zero-width interval.
    assert d100.startswith("| d100 | general degraded: MMLU acc | +0.060 [+0.045, +0.075] | +0.000 [-0.015, +0.015] |")
    assert "| -0.150 [" in d100  # MMLU: 30 of 200 answers lost, with its interval
    assert lines[9].startswith("| d75-math<1> (recommended) | domain improved, general retained | +0.040 [")


def test_markdown_shows_scores_with_standard_errors_every_check_with_advice_and_the_rule(comparison):
    text = render_markdown(comparison)
    assert "| base | 0.245 ± 0.002 | 0.450 ± 0.035 |" in text  # value ± standard error
    assert "| MMLU medical acc (n=200) |" in text.split("## Scores (± standard error)")[1].splitlines()[2]
    assert "### d100: general degraded: MMLU acc" in text
    assert ("- general degraded: MMLU acc -0.150 (95% CI [" in text
            and "fell by more than the tolerance 0.02. Next: blend in general data: run a mix below 100% domain "
                "with the stem category." in text)
    assert "- passed: domain ROUGE-L met, ARC-Challenge acc_norm retained" in text
    assert f"- Rule: {RULE}" in text
    assert "95% percentile bootstrap intervals over items, the level expanded for small n (2,000 resamples" in text
    assert text.rstrip().endswith("![Pareto: domain gain vs general change](pareto.png)")


def test_table_rows_for_the_prefect_pane_put_the_verdict_second(comparison):
    rows = score_rows(comparison)
    assert [list(r)[:2] for r in rows] == [["run", "verdict"]] * 3
    assert [r["verdict"] for r in rows] == ["base", comparison.verdicts["d100"], comparison.verdicts["d75-math<1>"]]
    assert rows[1]["change in MMLU acc (n=200)"].startswith("-0.150 [")


def test_pareto_plot_draws_error_bars_and_labels_its_axes_in_words(comparison):
    import matplotlib.pyplot as plt

    fig = pareto_figure(comparison)
    try:
        (ax,) = fig.axes
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 2 and all(c.has_xerr and c.has_yerr for c in bars)
        assert ax.get_xlabel() == "Domain gain: change in domain ROUGE-L against the base model"
        assert ax.get_ylabel() == "General change: mean change of general benchmark scores"
        labels = [t.get_text() for t in ax.texts]
        assert "d75-math<1> (recommended)" in labels
        assert "d100\ngeneral degraded: MMLU acc" in labels  # inside the band or not, a failed check shows
    finally:
        plt.close(fig)


def test_pareto_png_is_written_and_embedded_in_the_html(comparison, tmp_path):
    png = plot_pareto(comparison, tmp_path / "plots" / "pareto.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    page = render_html(comparison, pareto_png=png)
    assert base64.b64encode(data).decode() in page
    assert "<td>d75-math&lt;1&gt; (recommended)</td>" in page and "d75-math<1>" not in page  # names escaped
    assert page.index('class="recommendation"') < page.index("<table>")
    assert "<img" not in render_html(comparison)


def test_a_report_without_tuned_runs_still_shows_the_base_scores():
    base = base_run(n=10)
    text = render_markdown(compare_runs(base, []), pareto_png=None)
    assert "**No tuned mix to compare.**" in text and "| base | 0.245 ± " in text
    assert DOMAIN not in text  # labelled, never a raw key
