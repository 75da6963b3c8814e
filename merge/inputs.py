"""Find each input checkpoint on disk and check that the inputs can be merged, reading only headers.

Everything here runs before the first byte of output is written: a directory that is missing, holds only pickled
weights, or disagrees with the others in architecture, vocabulary, tensor names or shapes stops the merge with one
line that names the checkpoint and what to do about it. Tensor shapes and dtypes come from the safetensors headers
(`safe_open` + `get_slice`), so the checks read no tensor data, whatever the model's size.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from align.models.embedded import resolve_model
from merge.config import MergeError, MergeSpec

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype code: F32, BF16, F16, ...
    file: Path


@dataclass
class Checkpoint:
    """A resolved input: the directory whose safetensors are read, and what it is (adapters are merged first)."""

    ref: str
    path: Path
    config: dict
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    adapter: Path | None = None  # a LoRA adapter directory; `path` is its base until the adapter is merged
    base_ref: str | None = None

    @property
    def name(self) -> str:
        return self.ref

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or ["?"]
        return f"{archs[0]} ({self.config.get('model_type', '?')})"

    @property
    def vocab_size(self) -> int | None:
        value = self.config.get("vocab_size")
        if value is None:
            value = (self.config.get("text_config") or {}).get("vocab_size")
        return value


def resolve(ref: str) -> Checkpoint:
    """A config reference → a Checkpoint with its config and tensor headers (an adapter: its base's)."""
    if "+" in ref and not Path(ref).expanduser().exists():
        ref_base, adapter_ref = ref.split("+", 1)  # mergekit's `base+adapter` syntax
        base = _directory(ref_base, ref)
        adapter = _directory(adapter_ref, ref)
        _check_adapter(adapter, ref)
        return _with_weights(Checkpoint(ref, base, _config(base, ref), adapter=adapter, base_ref=ref_base), ref)
    path = _directory(ref, ref)
    if (path / "adapter_config.json").is_file():
        _check_adapter(path, ref)
        try:
            base_ref = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except json.JSONDecodeError as e:
            raise MergeError(f"{path}/adapter_config.json: invalid JSON ({e})") from None
        if not base_ref:
            raise MergeError(f"{path}/adapter_config.json: no base_model_name_or_path, so its base is unknown")
        base = _directory(base_ref, f"{ref} (the base of this LoRA adapter)")
        if (base / "adapter_config.json").is_file():
            raise MergeError(f"'{ref}': its base '{base_ref}' is itself an adapter; merge that one first")
        return _with_weights(Checkpoint(ref, base, _config(base, ref), adapter=path, base_ref=base_ref), ref)
    return _with_weights(Checkpoint(ref, path, _config(path, ref)), ref)


def _directory(ref: str, what: str) -> Path:
    path = Path(resolve_model(ref)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise MergeError(f"'{what}': {path} is a file; give the checkpoint's directory")
    hint = ""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        hint = " (polyalign merges local checkpoints: download the hub model first and give its directory)"
    where = "" if str(path) == what else f" {path}"
    raise MergeError(f"'{what}': no such directory{where}{hint}")


def _check_adapter(path: Path, ref: str) -> None:
    if (path / "adapter_model.safetensors").is_file():
        return
    if any(path.glob("adapter_model.bin")):
        raise MergeError(
            f"'{ref}': the adapter is a pickle (adapter_model.bin); polyalign merges safetensors only: "
            "re-save it with save_pretrained(..., safe_serialization=True)"
        )
    raise MergeError(f"'{ref}': {path} has adapter_config.json but no adapter_model.safetensors")


def _config(path: Path, ref: str) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise MergeError(f"'{ref}': {path} has no config.json, so it is not a transformers checkpoint")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MergeError(f"'{ref}': {file}: invalid JSON ({e})") from None


def _with_weights(ckpt: Checkpoint, ref: str) -> Checkpoint:
    ckpt.tensors = read_headers(ckpt.path, ref)
    return ckpt


def weight_files(path: Path, ref: str) -> list[Path]:
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise MergeError(f"'{ref}': {index}: not a safetensors index ({e})") from None
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MergeError(f"'{ref}': {index} lists {missing[0]}, which is missing (an incomplete download?)")
        return files
    files = sorted(p for p in path.glob("*.safetensors") if p.name != "adapter_model.safetensors")
    if files:
        return files
    pickles = sorted(p.name for pattern in PICKLES for p in path.glob(pattern))
    if pickles:
        raise MergeError(
            f"'{ref}' has only pickled weights ({pickles[0]}); polyalign merges safetensors only: "
            "re-save with save_pretrained(dir, safe_serialization=True)"
        )
    raise MergeError(f"'{ref}': no *.safetensors weights in {path}")


def read_headers(path: Path, ref: str) -> dict[str, TensorInfo]:
    from safetensors import safe_open

    tensors: dict[str, TensorInfo] = {}
    for file in weight_files(path, ref):
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    tensors[name] = TensorInfo(tuple(piece.get_shape()), piece.get_dtype(), file)
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
            raise MergeError(f"'{ref}': {file.name} is not a readable safetensors file ({e})") from None
    return tensors


# -- compatibility ---------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """What the merged model holds and where each input's share of every tensor comes from."""

    names: list[str]  # output tensors, in natural order
    sources: list[dict[str, str | None]]  # per input: output tensor → tensor to read (None: the input lacks it)
    tied: bool | None  # tie_word_embeddings of the output; None keeps the donor config's


def layout(ckpts: list[Checkpoint]) -> Layout:
    """Inputs with the same tensors and the same tying merge name by name. Otherwise embeddings are matched up:
    a tied checkpoint stores only its input embedding, which is also its output embedding, so it can be averaged
    with untied checkpoints' lm_head, and the merged model is then untied (transformers would otherwise drop the
    averaged lm_head and reuse the embedding)."""
    same_names = all(set(c.tensors) == set(ckpts[0].tensors) for c in ckpts)
    same_tying = len({repr(_tie_flag(c.config)) for c in ckpts}) == 1
    if same_names and same_tying:  # the common case, decided without importing transformers
        names = sorted(ckpts[0].tensors, key=natural_key)
        return Layout(names, [{n: n for n in names} for _ in ckpts], None)
    names = set(effective_tensors(ckpts[0]))
    for c in ckpts[1:]:
        names |= {h for h in tie_names(c.config) if h in effective_tensors(c)}
    ordered = sorted(names, key=natural_key)
    return Layout(
        ordered, [{n: read_name(c, n) for n in ordered} for c in ckpts], all(is_tied(c.config) for c in ckpts)
    )


def _tie_flag(config: dict):
    value = config.get("tie_word_embeddings")
    return value if value is not None else (config.get("text_config") or {}).get("tie_word_embeddings")


def tied_pairs(config: dict) -> dict[str, str]:
    """{output-embedding tensor: input-embedding tensor} when this checkpoint's embeddings are tied, else {}."""
    return tie_names(config) if is_tied(config) else {}


def tie_names(config: dict) -> dict[str, str]:
    """The architecture's tieable pairs, from its transformers class (`_tied_weights_keys`)."""
    archs = config.get("architectures") or []
    return dict(_tie_names(archs[0] if archs else ""))


@functools.cache
def _tie_names(architecture: str) -> tuple[tuple[str, str], ...]:
    try:
        import transformers

        keys = getattr(getattr(transformers, architecture), "_tied_weights_keys", None) if architecture else None
    except (AttributeError, ImportError):
        keys = None
    if isinstance(keys, dict):
        return tuple(keys.items())
    return (("lm_head.weight", "model.embed_tokens.weight"),)


def is_tied(config: dict) -> bool:
    value = _tie_flag(config)
    if value is None:
        try:  # the architecture's default (False for Llama, True for e.g. Gemma)
            from transformers import AutoConfig

            value = getattr(AutoConfig.for_model(config["model_type"]), "tie_word_embeddings", False)
        except Exception:
            value = False
    return bool(value)


def effective_tensors(ckpt: Checkpoint) -> set[str]:
    """The tensors this checkpoint contributes, a tied output embedding dropped (it is the input embedding; a stored
    copy is ignored, as transformers ignores it when loading)."""
    pairs = tied_pairs(ckpt.config)
    return {name for name in ckpt.tensors if name not in pairs}


def read_name(ckpt: Checkpoint, name: str) -> str | None:
    """The tensor to read from `ckpt` for output tensor `name`: itself, or the input embedding it is tied to."""
    pairs = tied_pairs(ckpt.config)
    if name in pairs:
        return pairs[name] if pairs[name] in ckpt.tensors else None
    return name if name in ckpt.tensors else None


def check_compatible(spec: MergeSpec, ckpts: list[Checkpoint], *, allow_vocab_mismatch: bool = False) -> None:
    """Same architecture, vocabulary and tensors (names and shapes) in every input, else a one-line error."""
    first = ckpts[0]
    for other in ckpts[1:]:
        if other.architecture != first.architecture:
            raise MergeError(
                f"architectures differ: '{first.name}' is {first.architecture}, '{other.name}' is "
                f"{other.architecture}; merge checkpoints of one architecture only"
            )
    sizes = {c.name: c.vocab_size for c in ckpts}
    vocab_differs = len(set(sizes.values())) > 1
    if vocab_differs and not allow_vocab_mismatch:
        listed = ", ".join(f"'{n}' has {v}" for n, v in sizes.items())
        raise MergeError(
            f"vocabulary sizes differ ({listed}): set tokenizer_source (union, base or one model's path) "
            "so mergekit aligns the embeddings to one tokenizer, or resize the embeddings to one size "
            "(model.resize_token_embeddings) before merging"
        )
    if spec.layered:
        return  # layer-wise recipes may combine different depths; mergekit checks each slice
    plan = layout(ckpts)
    for c, sources in zip(ckpts, plan.sources):
        missing = [n for n in plan.names if sources[n] is None]
        extra = sorted(
            (effective_tensors(c) if plan.tied is not None else set(c.tensors)) - set(plan.names), key=natural_key
        )
        if missing or extra:
            more = len(missing) + len(extra) - 1
            if missing:
                owner = next(o.name for o, s in zip(ckpts, plan.sources) if s[missing[0]] is not None)
                what = f"'{c.name}' has no {missing[0]}, which '{owner}' has"
            else:
                what = f"'{c.name}' has {extra[0]}, which '{first.name}' has not"
            raise MergeError(
                f"tensor names differ: {what}"
                + (f" ({more} more differences)" if more else "")
                + "; merge checkpoints of the same architecture and size"
            )
    skip = set()
    if vocab_differs:  # mergekit re-maps the vocabulary axis of the embeddings to the chosen tokenizer
        pairs = tie_names(first.config)
        skip = set(pairs) | set(pairs.values())
    for name in plan.names:
        if name in skip:
            continue
        shapes = {c.name: c.tensors[s[name]].shape for c, s in zip(ckpts, plan.sources)}
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"'{n}' {list(s)}" for n, s in shapes.items())
            raise MergeError(f"tensor shapes differ for {name}: {listed}; merge checkpoints of the same size")


def natural_key(name: str) -> list:
    """model.layers.2 before model.layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# -- LoRA ------------------------------------------------------------------------------------------------------


def merge_adapter(ckpt: Checkpoint, into: Path) -> Checkpoint:
    """Merge a LoRA adapter into its base (peft `merge_and_unload`) and save it as safetensors in `into`.

    The whole base is loaded here (peft needs the module tree); the averaging that follows is streamed again.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    log.info("merging LoRA adapter %s into %s", ckpt.adapter, ckpt.path)
    dtype = ckpt.config.get("dtype") or ckpt.config.get("torch_dtype") or "float32"
    model = AutoModelForCausalLM.from_pretrained(
        ckpt.path, dtype=getattr(torch, str(dtype), torch.float32), use_safetensors=True
    )
    model = PeftModel.from_pretrained(model, str(ckpt.adapter), is_trainable=False).merge_and_unload()
    into.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(into, safe_serialization=True)
    del model
    donor = ckpt.adapter if (ckpt.adapter / "tokenizer_config.json").is_file() else ckpt.path
    copy_tokenizer(donor, into)
    merged = Checkpoint(ckpt.ref, into, _config(into, ckpt.ref), adapter=ckpt.adapter, base_ref=ckpt.base_ref)
    return _with_weights(merged, ckpt.ref)


def copy_tokenizer(source: Path, target: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    if (source / "additional_chat_templates").is_dir():
        shutil.copytree(source / "additional_chat_templates", target / "additional_chat_templates", dirs_exist_ok=True)
    return copied


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").is_file() and any(
        (path / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
    )
