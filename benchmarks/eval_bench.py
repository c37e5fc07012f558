"""Evaluation benchmark: the demo's two axes on SmolLM2-135M-Instruct, before and after, in one process.

    .venv/bin/python benchmarks/eval_bench.py             # one round per arm
    .venv/bin/python benchmarks/eval_bench.py --rounds 2  # arms take turns, each keeps its fastest round

Both arms evaluate the base model and base + a LoRA adapter (the demo's LoRA
shape, r=16 on attention and MLP, random B so it changes the model) on the
demo's evaluation settings: ARC-Easy 40 and PIQA 60 through lm-eval, 20
MedQuAD questions (the last 20 rows of ``data/medquad``; user question,
reference answer) with at most 48 new tokens.

    before  what the code did until this benchmark was written (rebuilt here as the
            peer): float32 weights (``eval.dtype: auto`` kept the converted
            checkpoint's float32), the adapter applied unmerged (lm-eval's
            ``peft=`` and ``PeftModel``) and 8 prompts per ``generate()`` (the
            demo's old ``domain.batch_size``)
    after   today's code and defaults: ``eval.dtype: auto`` resolved (bfloat16 on a
            CPU with AVX512-BF16 or AMX, else float32), the adapter merged at load,
            ``domain.batch_size`` 32

Per arm and model it reports seconds for the general axis (with the time
inside the model's forward passes, the rest being lm-eval's request building,
scoring and ~1 s of environment collection per ``simple_evaluate`` call) and
the domain axis split into load, prefill (``generate`` with one new token)
and decode. The goal: the after arm's total under half of the before arm's.
Last line: one JSON object with keys ``before_eval_s``, ``after_eval_s``,
``ratio_before_over_after``, ``dtype_after`` and ``arms`` (arm -> model ->
seconds by part).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(key, value)

from real_model import REPO, smollm2_folder  # noqa: E402

# --- knobs: the demo's evaluation settings and LoRA shape ---
DOMAIN_ROWS = 20
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def domain_prompts() -> list[list[dict[str, str]]]:
    rows = [json.loads(line) for line in (REPO / "data" / "medquad" / "medquad.jsonl").read_text().splitlines()]
    return [[{"role": "user", "content": row["question"]}] for row in rows[-DOMAIN_ROWS:]]


def make_adapter(base: Path, folder: Path) -> str:
    """A LoRA adapter of the demo's shape with random B (a trained one costs the same to evaluate)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(folder)
    return str(folder)


class ForwardClock:
    """Seconds spent inside lm-eval's ``HFLM._model_call`` (the forward passes)."""

    def __init__(self) -> None:
        from lm_eval.models.huggingface import HFLM

        self.seconds, original = 0.0, HFLM._model_call

        def timed(lm, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(lm, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        HFLM._model_call = timed


# --- the before arm: the loaders as they were (float32 by default, the adapter unmerged) ---


def before_build_lm(pretrained, cfg, *, adapter_dir=None, revision=None, trust_remote_code=False):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=pretrained, revision=revision or "main", peft=adapter_dir, batch_size=cfg.batch_size,
                max_length=cfg.max_length, device="cpu", dtype=cfg.dtype, trust_remote_code=trust_remote_code)


def before_load(pretrained, *, adapter_dir=None, dtype="float32", device=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=getattr(torch, dtype))
    if adapter_dir:
        model = PeftModel.from_pretrained(model, adapter_dir)
    return model.eval(), AutoTokenizer.from_pretrained(pretrained)


def time_model(arm: str, eval_cfg, pretrained: str, adapter: str | None, prompts, clock: ForwardClock
               ) -> dict[str, float]:
    import mixtune.eval.domain as domain
    import mixtune.eval.general as general

    parts: dict[str, float] = {}
    today_build_lm = general.build_lm
    general.build_lm = before_build_lm if arm == "before" else today_build_lm
    try:
        clock.seconds, start = 0.0, time.perf_counter()
        general.run_general(pretrained, eval_cfg, adapter_dir=adapter, log_samples=True)
        parts["general_s"] = time.perf_counter() - start
        parts["general_forward_s"] = clock.seconds
    finally:
        general.build_lm = today_build_lm

    start = time.perf_counter()
    load = before_load if arm == "before" else domain.load_eval_model
    model, tokenizer = load(pretrained, adapter_dir=adapter, dtype=eval_cfg.dtype, device=eval_cfg.device)
    parts["domain_load_s"] = time.perf_counter() - start
    batch = eval_cfg.domain.batch_size
    start = time.perf_counter()
    domain.generate_answers(model, tokenizer, prompts, max_new_tokens=1, batch_size=batch)
    parts["domain_prefill_s"] = time.perf_counter() - start
    start = time.perf_counter()
    domain.generate_answers(model, tokenizer, prompts, max_new_tokens=eval_cfg.domain.max_new_tokens,
                            batch_size=batch)
    parts["domain_decode_s"] = max(time.perf_counter() - start - parts["domain_prefill_s"], 0.0)
    # What the eval_domain stage pays: one load and one full generation (prefill + decode).
    parts["domain_s"] = parts["domain_load_s"] + parts["domain_prefill_s"] + parts["domain_decode_s"]
    parts["total_s"] = parts["general_s"] + parts["domain_s"]
    return {k: round(v, 2) for k, v in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds per arm; each arm keeps its fastest")
    args = parser.parse_args()

    import logging
    import warnings

    logging.disable(logging.WARNING)  # lm-eval and transformers chatter
    warnings.filterwarnings("ignore")
    from mixtune.config import load_config
    from mixtune.eval.under_test import eval_device, eval_dtype
    from mixtune.resources import DEMO_CONFIG

    demo = load_config(DEMO_CONFIG).eval
    base = smollm2_folder()
    adapter = make_adapter(base, Path(tempfile.mkdtemp(prefix="mixtune-eval-bench-")) / "adapter")
    arms = {
        "before": demo.model_copy(update={"dtype": "float32",
                                          "domain": demo.domain.model_copy(update={"batch_size": 8})}),
        "after": demo,
    }
    prompts, clock = domain_prompts(), ForwardClock()
    best: dict[str, dict[str, dict[str, float]]] = {}
    for round_ in range(args.rounds):
        for arm, cfg in arms.items():
            timed = {name: time_model(arm, cfg, str(base), ad, prompts, clock)
                     for name, ad in (("base", None), ("tuned", adapter))}
            total = sum(t["total_s"] for t in timed.values())
            print(f"round {round_ + 1} {arm}: {total:.1f} s " + json.dumps(timed), flush=True)
            if arm not in best or total < sum(t["total_s"] for t in best[arm].values()):
                best[arm] = timed
    before = sum(t["total_s"] for t in best["before"].values())
    after = sum(t["total_s"] for t in best["after"].values())
    print(json.dumps({"before_eval_s": round(before, 1), "after_eval_s": round(after, 1),
                      "ratio_before_over_after": round(before / after, 2),
                      "dtype_after": eval_dtype(demo.dtype, eval_device(demo.device)), "arms": best}))


if __name__ == "__main__":
    main()
