"""Training throughput: mixtune's loop against the tutorial recipe, same model, same rows, same process.

    .venv/bin/python benchmarks/train_bench.py                                  # CPU, tiny Llama, ~1-2 min
    .venv/bin/python benchmarks/train_bench.py --shape qwen2.5-0.5b --device cuda --steps 50

Baseline, the way most tutorials write it: HF Trainer + peft LoRA, each
conversation rendered with the chat template and tokenized, batches padded
to their longest example by DataCollatorForLanguageModeling (loss on every
token). mixtune: ``mixtune.train.loop.train`` on a manifest of the same rows
(packed micro-batches, loss on assistant tokens, no padding).

Rows are real MedQuAD question/answer pairs (data/medquad), so lengths follow
the demo medical set, capped at --max-length tokens the way the validate
stage rejects longer rows. Both runs see the same rows, the same number of
steps and examples per step, the same LoRA settings; the clock covers model
load, tokenization and training (imports are done before either starts).

tokens/s counts real tokens (examples' own tokens, not padding) per second;
real_token_share = real tokens / tokens the model processed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# --- knobs ---
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--shape", choices=["tiny", "qwen2.5-0.5b"], default="tiny")
parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
parser.add_argument("--steps", type=int, default=24, help="optimizer steps for each run")
parser.add_argument("--batch", type=int, default=8, help="examples per step (one micro-batch)")
parser.add_argument("--max-length", type=int, default=1024, help="rows longer than this many tokens are left out")
parser.add_argument("--threads", type=int, default=1,
                    help="CPU threads; 1 keeps timings steady on shared build machines")
parser.add_argument("--data", default=str(REPO / "data" / "medquad" / "medquad.jsonl"))
args = parser.parse_args()

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  DO_NOT_TRACK="true", HF_HUB_DISABLE_TELEMETRY="1")
if args.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # both runs must use the CPU even on a GPU machine

import polars as pl  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling,  # noqa: E402
                          Qwen2Config, Trainer, TrainingArguments)
from transformers.utils import logging as hf_logging  # noqa: E402

from mixtune.sections import TinyModelConfig  # noqa: E402
from mixtune.models.tiny import build_tiny_model  # noqa: E402
from mixtune.train.config import TrainConfig  # noqa: E402
from mixtune.train.loop import train  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
LORA = dict(rank=16, alpha=32.0, dropout=0.05)
LR = 2e-4


def make_model(workdir: Path) -> Path:
    """The tiny demo Llama, or a Qwen2.5-0.5B-shaped model from a config (random weights, no download)."""
    tiny = TinyModelConfig(corpus_files=[args.data], vocab_size=2048, hidden_size=128, intermediate_size=352,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=4096)
    path = build_tiny_model(tiny, workdir / "tiny")
    if args.shape == "tiny":
        return path
    config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
    qwen = workdir / "qwen2.5-0.5b-shape"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(qwen)
    AutoTokenizer.from_pretrained(path).save_pretrained(qwen)  # tiny tokenizer: ids fit any vocab
    return qwen


def conversations(tokenizer) -> list[list[dict]]:
    """Enough MedQuAD pairs for every step, each within max_length, in file order."""
    needed = args.steps * args.batch
    chosen = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            chat = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
            length = len(tokenizer.apply_chat_template(chat, tokenize=True)["input_ids"])
            if length <= args.max_length:
                chosen.append(chat)
            if len(chosen) == needed:
                return chosen
    raise SystemExit(f"only {len(chosen)} rows fit --max-length {args.max_length}; need {needed}")


class CountingCollator(DataCollatorForLanguageModeling):
    """The tutorial collator, counting real and padded tokens of every batch it builds."""

    real = processed = 0

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        CountingCollator.real += int(batch["attention_mask"].sum())
        CountingCollator.processed += batch["input_ids"].numel()
        return batch


def run_baseline(model_path: Path, chats: list[list[dict]], out: Path) -> dict:
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    dataset = [tokenizer(text, add_special_tokens=False) for text in texts]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    training_args = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=LR,
        lr_scheduler_type="cosine", logging_steps=10_000, save_strategy="no", report_to="none",
        use_cpu=args.device == "cpu", bf16=args.device == "cuda", dataloader_num_workers=0, disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=CountingCollator(tokenizer, mlm=False))
    stats = trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "real": CountingCollator.real, "processed": CountingCollator.processed,
            "loop_tokens_s": CountingCollator.real / stats.metrics["train_runtime"]}


def run_mixtune(model_path: Path, chats: list[list[dict]], out: Path) -> dict:
    frame = pl.DataFrame({"_row_id": list(range(len(chats))), "messages": chats})
    manifest = pl.DataFrame({
        "batch": [i // args.batch for i in range(len(chats))], "position": [i % args.batch for i in range(len(chats))],
        "source": ["medquad"] * len(chats), "row_id": list(range(len(chats))),
    })
    cfg = TrainConfig(global_batch_size=args.batch, per_device_batch_size=args.batch, max_length=args.max_length,
                      learning_rate=LR, lora=LORA, checkpoint_every_steps=None, logging_steps=10_000,
                      max_steps=args.steps)
    started = time.perf_counter()
    result = train(str(model_path), {"medquad": frame}, manifest, cfg, out, source_categories={"medquad": "domain"})
    seconds = time.perf_counter() - started
    real = sum(result.tokens_per_source.values())
    return {"seconds": seconds, "real": real, "processed": round(real / result.real_token_share),
            "loop_tokens_s": result.tokens_per_s}


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        workdir = Path(tmp)
        model_path = make_model(workdir)
        chats = conversations(AutoTokenizer.from_pretrained(model_path))
        print(f"shape {args.shape} on {args.device}: {args.steps} steps x {args.batch} examples "
              f"(max_length {args.max_length}), {torch.get_num_threads()} threads")
        baseline = run_baseline(model_path, chats, workdir / "baseline")
        mixtune = run_mixtune(model_path, chats, workdir / "mixtune")
    rows = {}
    for name, run in (("baseline", baseline), ("mixtune", mixtune)):
        rate = run["real"] / run["seconds"]
        share = run["real"] / run["processed"]
        rows[name] = (rate, share)
        print(f"{name:9s} {run['seconds']:7.1f} s  {run['real']:>9,} real of {run['processed']:>9,} processed tokens "
              f"({share:6.1%})  {rate:9,.0f} real tokens/s end to end, {run['loop_tokens_s']:9,.0f} in the loop")
    ratio = rows["mixtune"][0] / rows["baseline"][0]
    print(f"mixtune / baseline: {ratio:.2f}x real tokens/s")
    print(json.dumps({"bench": "train", "shape": args.shape, "device": args.device,
                      "baseline_tokens_s": round(rows["baseline"][0], 1),
                      "mixtune_tokens_s": round(rows["mixtune"][0], 1),
                      "baseline_real_token_share": round(rows["baseline"][1], 4),
                      "mixtune_real_token_share": round(rows["mixtune"][1], 4), "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
