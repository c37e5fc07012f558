"""Forgetting curves: each mix's loss on held-out sets while it trained, as a table and a plot.

The curves come from the train artifacts (``result.heldout_losses``, logged
during training by ``mixtune.train.forgetting``): for every held-out set (the
domain, each general category, the base model's own answers) the mean loss
per supervised token at step 0 (the base model) and every
``train.eval_every_steps``. A general set whose loss climbs while the domain's
falls is forgetting as it happens; the benchmarks measure it afterwards.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from mixtune.storage.artifacts import ArtifactRef, ArtifactStore

Curves = dict[str, dict[str, dict[int, float]]]  # mix -> held-out set -> step -> loss


def curves_from_result(result: dict) -> dict[str, dict[int, float]]:
    """A train artifact's ``result.heldout_losses`` (JSON: step keys are strings) with int steps."""
    raw = result.get("heldout_losses") or {}
    return {name: {int(step): float(loss) for step, loss in curve.items()} for name, curve in raw.items()}


def curves_table(curves: Curves) -> list[dict]:
    """One row per (mix, set): loss at the first and last measured step, and the change (last - first)."""
    rows = []
    for mix, sets in sorted(curves.items()):
        for name, curve in sorted(sets.items()):
            if not curve:
                continue
            first, last = min(curve), max(curve)
            rows.append({"mix": mix, "held-out set": name, "first step": first, "loss at first": curve[first],
                         "last step": last, "loss at last": curve[last], "change": curve[last] - curve[first]})
    return rows


def curves_markdown(curves: Curves) -> str:
    """The table as markdown: a rising loss on a general set reads as forgetting."""
    rows = curves_table(curves)
    if not rows:
        return ""
    lines = ["| mix | held-out set | loss at step 0 | loss at last step | change |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['mix']} | {row['held-out set']} | {row['loss at first']:.3f} "
                     f"| {row['loss at last']:.3f} (step {row['last step']}) | {row['change']:+.3f} |")
    return "\n".join(lines)


def plot_curves(curves: Curves, path: str | Path) -> Path | None:
    """One panel per held-out set, one line per mix: loss (nats per supervised token) against step."""
    sets = sorted({name for per_mix in curves.values() for name in per_mix})
    if not sets:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(sets))
    rows = -(-len(sets) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for index, name in enumerate(sets):
        axis = axes[index // columns][index % columns]
        for mix, per_mix in sorted(curves.items()):
            curve = per_mix.get(name)
            if curve:
                steps = sorted(curve)
                axis.plot(steps, [curve[s] for s in steps], marker="o", label=mix)
        axis.set_title(f"held-out {name}")
        axis.set_xlabel("training step")
        axis.set_ylabel("loss per answer token")
        axis.grid(alpha=0.3)
    for index in range(len(sets), rows * columns):
        axes[index // columns][index % columns].axis("off")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Forgetting curves: loss on rows no run trained on (rising = forgetting)")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def curves_of_runs(store: ArtifactStore, runs: dict[str, list[ArtifactRef]]) -> Curves:
    """Each mix's held-out losses during training, from the train artifact its evaluations descend from."""
    curves: Curves = {}
    for name, refs in runs.items():
        for ref in refs:
            for parent in store.manifest(ref).get("parents", []):
                if parent.get("stage") == "train" and name not in curves:
                    result = store.read_json(f"{parent['uri']}/manifest.json").get("result") or {}
                    if found := curves_from_result(result):
                        curves[name] = found
    return curves


def add_to_report(report_dir: Path, curves: Curves) -> None:
    """Append the curves (a table and ``curves.png``) to ``report.md`` and ``report.html`` in ``report_dir``."""
    if not curves or plot_curves(curves, report_dir / "curves.png") is None:
        return
    intro = ("Loss per answer token on rows no run trained on, at step 0 (the base model) and every "
             "`train.eval_every_steps`: each general category's held-out rows, the domain's validation rows, and "
             "base_answers (the base model's own answers to held-out general prompts). A general set whose loss "
             "climbs is being forgotten while the run trains; the benchmarks above measure it afterwards.")
    table = curves_markdown(curves)
    markdown = report_dir / "report.md"
    markdown.write_text(markdown.read_text(encoding="utf-8").rstrip("\n")
                        + f"\n\n## Forgetting curves while training\n\n{intro}\n\n{table}\n\n"
                          "![Forgetting curves](curves.png)\n", encoding="utf-8")
    rows = "".join(f"<tr><td>{html.escape(r['mix'])}</td><td>{html.escape(r['held-out set'])}</td>"
                   f"<td>{r['loss at first']:.3f}</td><td>{r['loss at last']:.3f} (step {r['last step']})</td>"
                   f"<td>{r['change']:+.3f}</td></tr>" for r in curves_table(curves))
    encoded = base64.b64encode((report_dir / "curves.png").read_bytes()).decode("ascii")
    section = (f"<h2>Forgetting curves while training</h2><p>{html.escape(intro)}</p><table><thead><tr>"
               "<th>mix</th><th>held-out set</th><th>loss at step 0</th><th>loss at last step</th><th>change</th>"
               f"</tr></thead><tbody>{rows}</tbody></table>"
               f'<img alt="Forgetting curves" src="data:image/png;base64,{encoded}">')
    page = report_dir / "report.html"
    page.write_text(page.read_text(encoding="utf-8").replace("\n</body>", f"\n{section}\n</body>", 1),
                    encoding="utf-8")
