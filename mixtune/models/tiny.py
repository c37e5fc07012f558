"""The offline demo model: a tiny Llama-shaped causal LM with its own tokenizer.

No hub is reachable on the build machines, so the demo and the tests build a
model from a config instead of downloading one: a byte-level BPE tokenizer
trained on local text, a ChatML chat template, and randomly initialised
weights from a fixed seed. The result is an ordinary Hugging Face model folder
(``config.json``, ``model.safetensors``, tokenizer files), loaded by every
later stage with ``AutoModelForCausalLM.from_pretrained`` like any hub model.

Same config and same corpus bytes give the same folder, so the folder name is
a fingerprint of both and a second build is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Iterator

from mixtune.storage.artifacts import ArtifactStore, fingerprint, publish_dir
from mixtune.sections import TINY_MODEL, ModelConfig, TinyModelConfig

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen and many open chat models use; generation stops on <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Enough text for a small BPE vocabulary; keeps the build under a second.
_MAX_CORPUS_LINES = 20_000


def _corpus_lines(files: list[str]) -> Iterator[str]:
    """Strings from each file: every string value of JSONL rows, or plain lines."""
    emitted = 0
    for file in files:
        with open(file, encoding="utf-8") as f:
            for line in f:
                if emitted >= _MAX_CORPUS_LINES:
                    return
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = line
                values = row.values() if isinstance(row, dict) else [row]
                for value in values:
                    if isinstance(value, str) and value.strip():
                        emitted += 1
                        yield value


def _corpus_fingerprint(files: list[str]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()


def tiny_model_key(cfg: TinyModelConfig) -> str:
    """Fingerprint of the model config and the tokenizer corpus bytes."""
    return fingerprint("tiny-model-v1", cfg, _corpus_fingerprint(cfg.corpus_files))


def build_tiny_model(cfg: TinyModelConfig, out_dir: str | Path) -> Path:
    """Train the tokenizer, initialise the model and save both as a HF model folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if not cfg.corpus_files:
        raise ValueError("model.tiny.corpus_files is empty: the tokenizer needs local text to train on")
    out_dir = Path(out_dir)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(cfg.corpus_files), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
        pad_token="<pad>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=cfg.max_position_embeddings,
    )
    hf_tok.chat_template = CHAT_TEMPLATE

    torch.manual_seed(cfg.seed)
    model_cfg = LlamaConfig(
        vocab_size=len(hf_tok),  # the trained vocab can be smaller than asked for
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(model_cfg)
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir


def local_model_cache(store: ArtifactStore) -> Path:
    """A local folder for models fetched from a remote root (HF loaders need local files)."""
    if store.is_local:
        return Path(store.root) / "models"
    return Path(tempfile.gettempdir()) / "mixtune-models" / fingerprint(store.cfg.root)[:12]


_UPLOADED = ".uploaded"  # written after every other file of a tiny model on a remote root


def resolve_model(model: ModelConfig, store: ArtifactStore) -> str:
    """A path or hub id that ``from_pretrained`` can load; builds the tiny model when asked.

    The tiny model is kept under ``<root>/models/tiny-<key>``; on an S3 root a
    local copy is fetched once into a cache folder.
    """
    if model.name_or_path != TINY_MODEL:
        return model.name_or_path
    name = f"tiny-{tiny_model_key(model.tiny)[:16]}"
    local = local_model_cache(store) / name
    if (local / "config.json").exists():
        return str(local)
    remote = store.uri("models", name)
    # The marker is uploaded last: a folder cut short by an outage or a concurrent upload is not used.
    if not store.is_local and store.exists(f"{remote}/{_UPLOADED}"):
        return str(store.fetch_dir(remote, local))
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(model.tiny, tmp)
        if not store.is_local:
            store.put_dir(tmp, remote)
            store.write_bytes(f"{remote}/{_UPLOADED}", b"")
        local.parent.mkdir(parents=True, exist_ok=True)
        _copy_tree(Path(tmp), local)
    return str(local)


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy into place atomically; a concurrent run that built the same model first keeps its copy."""
    import shutil

    publish_dir(lambda partial: shutil.copytree(src, partial, dirs_exist_ok=True), dst)


def load_tokenizer(path_or_id: str, model: ModelConfig):
    """The tokenizer every stage counts tokens and renders chat with."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        path_or_id, revision=model.revision, trust_remote_code=model.trust_remote_code
    )
