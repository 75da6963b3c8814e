"""Load a policy and its tokenizer the same way in every stage.

Choices made here, once: the embedded alias, dtype (bf16 on CUDA, fp32 on CPU), attention backend
(flash_attention_2 when flash-attn and CUDA are there, else sdpa), 4/8-bit bases through bitsandbytes (CUDA only),
LoRA through peft, safetensors only, and no remote code unless asked.

One module over 400 lines: every loading choice in one place, so that stages, rankers and judges load alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from align.core import compat
from align.core.errors import ConfigError, PolyalignError
from align.models.embedded import DEFAULT_MODEL, resolve_model

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclass
class LoraArgs:
    """LoRA defaults from the native-vs-translated instruction-tuning study: r=8, alpha=16, dropout 0.05. With no
    `target_modules`, the architecture's own: peft's default for the family, else every linear layer."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str | None = None
    bias: str = "none"
    modules_to_save: list[str] | None = None
    # peft's: adapt only these decoder layers (e.g. the top few); backward then stops at the lowest of them, which
    # makes a reward model trainable on a CPU in minutes.
    layers_to_transform: list[int] | None = None


@dataclass
class LoadingArgs:
    """How a stage loads every model it uses: declared once, shared by every stage config that loads models."""

    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 or fp32
    # auto (flash-attention, else sdpa, else eager per family), or a transformers backend
    attn_implementation: str = "auto"
    # run a model repository's own code (off: safetensors and transformers' classes only)
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ConfigError(None, "dtype", f"unknown dtype {self.dtype!r} (expected auto, {', '.join(DTYPES)})")
        if self.attn_implementation not in ATTENTION:
            raise ConfigError(
                None,
                "attn_implementation",
                f"unknown backend {self.attn_implementation!r} (expected {', '.join(ATTENTION)})",
            )
        getattr(super(), "__post_init__", lambda: None)()

    def model_args(self, model: str = DEFAULT_MODEL) -> ModelArgs:
        """`model` loaded the way this config says (a ranker's loader takes the model name from its own spec)."""
        return ModelArgs(
            model=model,
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
        )


# Not trl's ModelConfig: its keys (model_name_or_path, use_peft, lora_r, ...) would rename every recipe's `model` and
# nested `lora:`, and it knows no embedded aliases.
@dataclass
class ModelArgs(LoadingArgs):
    model: str = DEFAULT_MODEL  # a checkpoint directory, hub id, or alias of an embedded model (smollm2-135m)
    revision: str | None = None  # the hub revision (branch, tag or commit) to load
    chat_template: str | None = None  # for a model without one: a known name (chatml, llama3, gemma, ...), a file
    load_in_4bit: bool = False  # QLoRA: the base in 4 bits through bitsandbytes (CUDA only)
    load_in_8bit: bool = False  # the base in 8 bits through bitsandbytes (CUDA only)
    bnb_4bit_quant_type: str = "nf4"  # nf4 or fp4, with load_in_4bit
    bnb_4bit_use_double_quant: bool = True  # quantise the 4-bit scales too, with load_in_4bit


def cuda_available() -> bool:
    return torch.cuda.is_available()


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if cuda_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if cuda_available() else torch.float32
    return DTYPES[name]  # an unknown name is refused by LoadingArgs when the config is parsed


def resolve_attention(name: str, dtype: torch.dtype) -> str:
    """The attention backend for `name` (one of ATTENTION, checked by LoadingArgs), refusing what this machine lacks."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        return (
            "flash_attention_2"
            if has_flash and cuda_available() and dtype in (torch.bfloat16, torch.float16)
            else "sdpa"
        )
    if name.startswith("flash_attention"):
        if not cuda_available():
            raise ConfigError(None, "attn_implementation", f"{name} needs a CUDA GPU; none is available")
        if name == "flash_attention_2" and not has_flash:
            raise ConfigError(
                None, "attn_implementation", "flash_attention_2 needs flash-attn: pip install 'polyalign[gpu]'"
            )
    return name


# Not trl's get_quantization_config: it takes a trl ModelConfig (use_bnb_nested_quant, dtype as a name), no CUDA check.
def quantization_config(args: ModelArgs, dtype: torch.dtype):
    if not (args.load_in_4bit or args.load_in_8bit):
        return None
    if args.load_in_4bit and args.load_in_8bit:
        raise ConfigError(None, "load_in_4bit", "choose one of load_in_4bit and load_in_8bit")
    key = "load_in_4bit" if args.load_in_4bit else "load_in_8bit"
    if not cuda_available():
        raise ConfigError(None, key, "QLoRA (bitsandbytes 4/8-bit) needs a CUDA GPU; none is available")
    from transformers import BitsAndBytesConfig

    if args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=args.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def _placement(quant, device_map) -> dict:
    """from_pretrained's quantization and placement keywords: a quantised model is loaded onto the current GPU."""
    if quant is not None:
        return {"quantization_config": quant, "device_map": device_map or {"": torch.cuda.current_device()}}
    return {} if device_map is None else {"device_map": device_map}


def model_path(name: str) -> str:
    """Resolve an alias; refuse a local-looking path that does not exist instead of asking the hub for it."""
    path = resolve_model(name)
    if (path.startswith((".", "/", "~")) or path.count("/") > 1) and not Path(path).expanduser().exists():
        raise PolyalignError(f"model '{name}': no such directory")
    return str(Path(path).expanduser()) if path.startswith("~") else path


def adapter_base(path: Path) -> str | None:
    """The base model a LoRA adapter directory was trained on; None when `path` is no adapter directory."""
    import json

    config = path / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise PolyalignError(f"{config} names no base_model_name_or_path")
    return base


def _auto_tokenizer(args: ModelArgs):
    """The model's tokenizer; an adapter directory saved without one uses its base's."""
    from transformers import AutoTokenizer

    path = model_path(args.model)
    base = None if (Path(path) / "tokenizer_config.json").is_file() else adapter_base(Path(path))
    try:
        return AutoTokenizer.from_pretrained(
            resolve_model(base) if base else path, trust_remote_code=args.trust_remote_code, revision=args.revision
        )
    except (OSError, ValueError) as e:
        raise PolyalignError(f"model '{args.model}': cannot load its tokenizer ({str(e).splitlines()[0]})") from None


def load_tokenizer(args: ModelArgs):
    tokenizer = _auto_tokenizer(args)
    if args.chat_template:
        from align.models.templates import apply

        apply(tokenizer, args.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise PolyalignError(
            f"model '{args.model}': its tokenizer has no chat template; give one with "
            "`chat_template:` (chatml, llama3, gemma, ... or a Jinja file), or use an instruct model"
        )
    return tokenizer


def match_embeddings(model, tokenizer):
    """A model whose tokenizer gained tokens (a chat template's) gets embeddings for them, and stops generating at the
    tokenizer's EOS (a template's end of turn)."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config = model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        config.eos_token_id = [e for e in eos if e is not None] + [tokenizer.eos_token_id]
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    return model


def load_model(args: ModelArgs, *, device_map=None):
    """Load a causal LM for training or generation (safetensors only)."""
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(args.dtype)
    attention = resolve_attention(args.attn_implementation, dtype)
    quant = quantization_config(args, dtype)
    path = model_path(args.model)
    if adapter_base(Path(path)):
        return _load_adapter(args, Path(path))
    kwargs = dict(
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
        use_safetensors=True,
        **_placement(quant, device_map),
    )
    model, attention = _with_attention(
        lambda attempt: AutoModelForCausalLM.from_pretrained(path, attn_implementation=attempt, **kwargs),
        args,
        attention,
    )
    log.info(
        "loaded %s (%s, %s, attention=%s)", args.model, sum(p.numel() for p in model.parameters()), dtype, attention
    )
    return model


def _load_adapter(args: ModelArgs, path: Path):
    """A LoRA adapter directory: load its base (an alias is resolved too), then the adapter on top."""
    from peft import PeftModel

    base_model = load_model(dataclasses.replace(args, model=adapter_base(path)))
    return PeftModel.from_pretrained(base_model, str(path))


# Not trl's get_peft_config: it takes a trl ModelConfig (use_peft, lora_r, ...) and always sets bias="none".
def lora_config(lora: LoraArgs, model, task_type: str = "CAUSAL_LM", source: str | None = None):
    from align.models.adapters import PublishedLoraConfig

    return PublishedLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(lora.target_modules, model, source),
        bias=lora.bias,
        modules_to_save=lora.modules_to_save,
        layers_to_transform=lora.layers_to_transform,
        task_type=task_type,
    )


def linear_module_names(model) -> list[str]:
    """The distinct names (last component) of the model's linear layers, its output heads left out."""
    heads = {"lm_head", "score", "classifier"}
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in heads
        }
    )


def lora_targets(targets: list[str] | str | None, model, source: str | None = None) -> list[str] | str:
    """What LoRA adapts, checked against the model: unset gives peft's default for the architecture (Llama's q, v) or,
    for a family peft has none for, every linear layer by name (Phi-3's fused qkv_proj, Cohere's; in an MoE of
    transformers 5 the experts are fused 3D weights, not layers, so attention); a name or regex that matches
    no module is a ConfigError listing the linear layers the model has. Logs what is targeted."""
    import re

    model_type = model.config.model_type
    linear = linear_module_names(model)
    how = "as asked"
    if targets is None:
        targets = compat.peft_default_lora_targets().get(model_type)
        how = (
            f"peft's default for {model_type}"
            if targets
            else f"every linear layer, peft having no default for {model_type}; fused expert weights are not layers"
        )
        targets = list(targets or linear)
    if targets == "all-linear":
        chosen = linear
    elif isinstance(targets, str):
        chosen = [name for name in linear if re.fullmatch(targets, name)]
        if not any(re.fullmatch(targets, name) for name, _ in model.named_modules()):
            raise ConfigError(
                source,
                "lora.target_modules",
                f"{targets!r} matches no module of {model_type}; its linear layers: {', '.join(linear)}",
            )
    else:
        missing = [t for t in targets if t not in linear]
        if missing:
            raise ConfigError(
                source,
                "lora.target_modules",
                f"{', '.join(missing)}: no such linear layer in {model_type}; its linear layers: {', '.join(linear)}",
            )
        chosen = list(targets)
    log.info("LoRA targets (%s): %s", how, ", ".join(chosen))
    return targets


# ---------------------------------------------------------------------------------------------------- reward models


def is_sequence_classifier(config) -> bool:
    """Whether a checkpoint's config says it was saved as a sequence-classification model (a scoring head)."""
    return any(name.endswith("ForSequenceClassification") for name in (getattr(config, "architectures", None) or []))


def load_reward_tokenizer(args: ModelArgs):
    """The reward model's own tokenizer; unlike `load_tokenizer`, a tokenizer without a chat template (an encoder, a
    base model) is accepted: polyalign then scores a plain "prompt\\n\\ncompletion" text."""
    tokenizer = _auto_tokenizer(args)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PolyalignError(f"model '{args.model}': its tokenizer has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward_model(
    args: ModelArgs, *, new_head: bool = False, pad_token_id: int | None = None, seed: int = 0, device_map=None
):
    """Load a one-output AutoModelForSequenceClassification (a Bradley–Terry reward model), safetensors only.

    new_head=False (scoring): the checkpoint must already be a sequence classifier with one label; a causal LM is
    refused instead of silently getting a random head. new_head=True (training, benchmarks): any causal LM or encoder
    gets a fresh scalar head, initialised from `seed` so that two runs start from the same model.
    `pad_token_id` is written into the config when it has none: a decoder's head reads the last non-pad token.
    """
    dtype = resolve_dtype(args.dtype)
    quant = quantization_config(args, dtype)
    path = model_path(args.model)
    if adapter_base(Path(path)):
        return _load_reward_adapter(args, Path(path), new_head=new_head, pad_token_id=pad_token_id, seed=seed)
    config = _reward_config(args, path, new_head)
    classifier = is_sequence_classifier(config)
    kwargs = dict(
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
        use_safetensors=True,
        num_labels=1,
        **_placement(quant, device_map),
    )
    if pad_token_id is not None and config.get_text_config().pad_token_id is None:
        kwargs["pad_token_id"] = pad_token_id
    attention = resolve_attention(args.attn_implementation, dtype)
    model, attention = _classifier_from_pretrained(args, path, attention, kwargs, None if classifier else seed)
    if pad_token_id is not None and model.config.get_text_config().pad_token_id is None:
        model.config.get_text_config().pad_token_id = pad_token_id
    log.info(
        "loaded reward model %s (%s head, %s, attention=%s)",
        args.model,
        "new" if not classifier else "trained",
        dtype,
        attention,
    )
    return model


def _reward_config(args: ModelArgs, path: str, new_head: bool):
    """The checkpoint's config, refused when it is no one-output classifier and no new head was asked for."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code, revision=args.revision)
    except (OSError, ValueError) as e:
        raise PolyalignError(f"model '{args.model}': cannot load its config ({str(e).splitlines()[0]})") from None
    classifier = is_sequence_classifier(config)
    if not classifier and not new_head:
        found = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        raise PolyalignError(
            f"model '{args.model}': not a reward model (a {found} checkpoint, not a "
            "...ForSequenceClassification one); train one with `polyalign reward`"
        )
    if classifier and config.num_labels != 1:
        raise PolyalignError(
            f"model '{args.model}': a classifier with {config.num_labels} labels; a reward model "
            "has one output (num_labels=1)"
        )
    return config


def _classifier_from_pretrained(args: ModelArgs, path: str, attention: str, kwargs: dict, head_seed: int | None):
    """(model, attention used); a new head is initialised from `head_seed`. A family transformers gives no
    sequence classifier (Cohere, Cohere2, ...) gets `sequence_classifier_class`: its backbone and a last-token head."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=args.trust_remote_code, revision=args.revision)
    classifier = sequence_classifier_class(config)

    def load(attempt: str):
        with contextlib.nullcontext() if head_seed is None else _fresh_head(head_seed):
            return classifier.from_pretrained(path, attn_implementation=attempt, **kwargs)

    return _with_attention(load, args, attention, "as a reward model")


def sequence_classifier_class(config):
    """transformers' sequence classifier for this config, or, where the family has none, the same Bradley–Terry model
    built the way transformers builds its generic ones (GenericForSequenceClassification: the family's backbone and a
    linear score head read at the last non-pad token). It saves as `<Family>ForSequenceClassification`; loading it
    outside polyalign takes this function (README, "Reward models")."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if compat.registered_model_class(AutoModelForSequenceClassification, config) is not None:
        return AutoModelForSequenceClassification
    causal = compat.registered_model_class(AutoModelForCausalLM, config)
    if causal is None:
        raise PolyalignError(
            f"{config.model_type}: transformers has neither a sequence classifier nor a causal LM "
            "for this family, so polyalign cannot build a reward model on it"
        )
    pretrained = next(base for base in causal.__mro__[1:] if base.__name__.endswith("PreTrainedModel"))
    name = causal.__name__.replace("ForCausalLM", "ForSequenceClassification")
    # The family's modeling module as its home: transformers reads that module's source to allow attention switches.
    return type(name, (compat.generic_sequence_classifier(), pretrained), {"__module__": causal.__module__})


def _with_attention(load, args: ModelArgs, attention: str, what: str = ""):
    """(load(attention), attention used). Under `auto`, a family without sdpa (Gemma 2's soft-capped logits, some
    encoders) gets eager, as transformers itself would choose."""
    attempts = (
        [attention, "eager"] if args.attn_implementation == "auto" and attention not in ("eager",) else [attention]
    )
    for attempt in attempts:
        try:
            return load(attempt), attempt
        except ValueError as e:
            if attempt != attempts[-1] and ("attn_implementation" in str(e) or "does not support" in str(e)):
                continue
            raise PolyalignError(
                f"model '{args.model}': cannot load{' ' + what if what else ''} ({str(e).splitlines()[0]})"
            ) from None
        except OSError as e:
            raise PolyalignError(
                f"model '{args.model}': cannot load ({str(e).splitlines()[0]}); polyalign loads "
                "safetensors checkpoints only"
            ) from None
    raise AssertionError("unreachable")


def _load_reward_adapter(args: ModelArgs, path: Path, **kwargs):
    """A LoRA adapter trained on a sequence classifier: its base with a head, then the adapter (and saved head)."""
    from peft import PeftModel

    kwargs["new_head"] = True  # the adapter carries the trained head (modules_to_save)
    base_model = load_reward_model(dataclasses.replace(args, model=adapter_base(path)), **kwargs)
    return PeftModel.from_pretrained(base_model, str(path))


@contextlib.contextmanager
def _fresh_head(seed: int):
    """Seed the new head's initialisation (without disturbing the caller's RNG) and silence transformers' notice
    that the head is new and the causal LM head unused: both are the point of loading a causal LM as a classifier."""
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    with torch.random.fork_rng(devices=[]), suppress_seqcls_warning():
        torch.manual_seed(seed)
        yield


def reward_lora_config(lora: LoraArgs, model, source: str | None = None):
    """LoRA for a reward model: task SEQ_CLS, so peft also trains and saves the new head (score / classifier)."""
    return lora_config(lora, model, task_type="SEQ_CLS", source=source)


def to_gpu_if_available(model):
    """The model on CUDA when there is a GPU and it was loaded on CPU (device_map placements are left alone)."""
    if cuda_available() and next(model.parameters()).device.type == "cpu":
        model.to("cuda")
    return model


def process_state(**kwargs):
    """accelerate's state of this process (`kwargs`: the process group's, e.g. `timeout`). Several processes under
    `accelerate launch` without CUDA form a gloo group of CPU processes."""
    from accelerate import PartialState

    return PartialState(cpu=not cuda_available(), **kwargs)


def release_memory() -> None:
    """Give back what a dropped model held (stages load models one at a time: teachers, policies, rankers)."""
    from accelerate.utils.memory import clear_device_cache

    clear_device_cache(garbage_collection=True)
