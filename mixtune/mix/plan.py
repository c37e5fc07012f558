"""The planned mix, before training: ``mixtune mix plan CONFIG [--json]``.

``plan_mix`` builds the manifest and returns its summary (``summary.py``) as a
``MixPlan``: the plan is exactly what training will see, since the manifest is
deterministic. Printable as text or JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import polars as pl

from mixtune.mix.manifest import MixManifest, MixSource, build_manifest
from mixtune.mix.spec import MixSpec

@dataclass
class MixPlan:
    """The planned mix: the summary frame plus totals and warnings."""

    frame: pl.DataFrame
    totals: dict[str, Any]
    warnings: list[str]

    @classmethod
    def from_manifest(cls, manifest: MixManifest) -> "MixPlan":
        return cls(frame=manifest.summary, totals=manifest.totals, warnings=manifest.warnings)

    def to_dict(self) -> dict[str, Any]:
        return {"totals": self.totals, "rows": self.frame.to_dicts(), "warnings": self.warnings}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_text(self) -> str:
        t = self.totals
        if t["domain_percent"] >= 100:
            head = "mix: 100% domain (control run: no category data)"
        else:
            weights = ", ".join(f"{c} {w:.1%}" for c, w in t["category_weights"].items())
            head = f"mix: {t['domain_percent']:g}% domain; the rest by category: {weights}"
        lines = [
            head,
            f"unit: {t['unit']}, seed {t['seed']}; planned: {t['batches']} batches x "
            f"{t['global_batch_size']} = {t['samples']:,} samples, {t['tokens']:,} tokens",
            "",
            f"{'category / source':<34}{'rows':>9}{'share':>9}{'samples':>11}{'tokens':>13}{'repeat':>8}",
        ]
        for r in self.frame.iter_rows(named=True):
            if r["level"] == "source":
                label = f"  {r['source']}"
            else:
                label = "total" if r["level"] == "total" else r["category"]
            lines.append(
                f"{label[:33]:<34}{r['rows']:>9,}{r['realized_share']:>9.2%}"
                f"{r['realized_samples']:>11,}{r['realized_tokens']:>13,}{r['repeat_factor']:>7.2f}x"
            )
        if t.get("note"):
            lines += ["", f"note: {t['note']}"]
        if self.warnings:
            lines += ["", "warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)


def plan_mix(
    spec: MixSpec,
    sources: Sequence["MixSource"],
    *,
    global_batch_size: int,
    max_steps: int | None = None,
    epochs: float | None = None,
) -> MixPlan:
    """The planned mix for these sources, computed by building the (deterministic) manifest."""
    manifest = build_manifest(spec, sources, global_batch_size=global_batch_size,
                              max_steps=max_steps, epochs=epochs)
    return MixPlan.from_manifest(manifest)
