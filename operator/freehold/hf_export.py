"""A GGUF model as a Hugging Face directory, for engine vllm (`freehold model to-hf`).

transformers reads GGUF files and dequantizes them; the weights are written as bfloat16
safetensors with the tokenizer and chat template, so vLLM serves the same model llama.cpp
does, offline (no hub). Imports transformers and torch only when called.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse


class ExportError(Exception):
    """The GGUF file cannot be exported; the message says why."""


def gguf_path(source: str) -> Path:
    """A path, or package://DISTRIBUTION/FILE (a model shipped in a Python package)."""
    if source.startswith("package://"):
        from freehold_serving.args import ModelConfig
        from freehold_serving.model_files import ModelFileError, resolve

        parsed = urlparse(source)
        if not parsed.path.strip("/"):
            raise ExportError(f"{source}: name the GGUF file in the package")
        try:
            return resolve(ModelConfig(uri=source, sha256="0" * 64, served_name="-"))
        except ModelFileError as exc:
            raise ExportError(str(exc)) from None
    path = Path(source)
    if not path.is_file():
        raise ExportError(f"{source}: no such file")
    return path


def export_gguf(source: str, output: Path) -> str:
    """Write OUTPUT (which must not exist or be empty); return its directory digest."""
    from freehold_serving.model_files import directory_digest

    path = gguf_path(source)
    if output.exists() and any(output.iterdir()):
        raise ExportError(f"{output} exists and is not empty; not overwriting it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ExportError(
            f"exporting needs the vllm extra (transformers, torch): {exc.name} is missing"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.bfloat16
        )
    except (ImportError, ValueError, OSError) as exc:
        raise ExportError(f"{path.name}: transformers cannot read it: {exc}") from None
    # The loaded model remembers it came from GGUF and refuses to save; a fresh model of
    # the same configuration takes its (dequantized) weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict())
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return directory_digest(output)
