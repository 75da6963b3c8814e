"""Translation-contrast preference pairs: a strong model's in-language answer over a weak model's English answer
machine-translated into the language (Dang et al. 2024, "RLHF Can Speak Many Languages").

For each prompt in language L (English prompts are skipped: there is nothing to contrast):
    chosen   = the strong model's answer to the prompt, in L
    rejected = the weak model's English answer, translated into L by the translator
The weak model answers either the prompt translated into English by the translator (`english_prompt: translate`)
or the original prompt with an instruction to answer in English (`english_prompt: instruct`). The pairs teach the
policy to prefer native, fluent answers over translationese.

Models are loaded one at a time (strong; translator; weak; translator; a phase whose model is already loaded reuses
it), each phase appending one flushed record per prompt into a hidden `.<output_dir>.partial`, so a killed run started again with the same config continues where it
stopped. The output directory appears, complete, at the end:

    pairs.jsonl (canonical preference records: prompt, chosen, rejected, lang, chosen_by, rejected_by, provenance)
    metrics.json  polyalign_recipe.json

One module over 400 lines: the four phases share one cache of loaded models and one resume log.
"""

from __future__ import annotations

import logging
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.core.config import build_dataclass, require, resolve_recipe
from align.core.console import print_table
from align.core.errors import ConfigError, PolyalignError
from align.core.io import shard_log, write_jsonl
from align.core.lifecycle import StageRun
from align.data import load_records
from align.data.languages import base_language, detect_language, language_name
from align.data.pairs import choose_pair, preference_record
from align.generation.generate import (
    DecodingArgs,
    GenerationArgs,
    check_models,
    choose_backend,
    generate_sharded,
    load_backend,
)
from align.models.loading import LoadingArgs, release_memory

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = (
    "Translate the following text from {source} to {target}. Reply with the translation only, nothing else.\n\n{text}"
)
DEFAULT_ENGLISH_INSTRUCTION = "Always answer in English, whatever the language of the question."
ENGLISH_PROMPT_MODES = ("translate", "instruct")


@dataclass
class RoleSpec:
    """One model of the pipeline. Unset generation keys take the stage's values ({language} in `system_prompt`
    becomes the prompt's language name)."""

    model: str | None = None  # a checkpoint (alias, path or hub id) ...
    api: dict | None = None  # ... or an OpenAI-compatible endpoint: {base_url, model, api_key_env, max_concurrency}
    name: str | None = None  # how chosen_by/rejected_by name it (default: the model)
    adapter: str | None = None  # a LoRA adapter served on `model`
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None


@dataclass
class ContrastArgs(LoadingArgs, DecodingArgs):
    """Contrast's own keys; the generation keys (defaults for every role; the translator is greedy unless its own
    temperature says otherwise) and model-loading keys are shared."""

    prompts: Any = None  # required: prompts in the languages to contrast (English ones are skipped)
    output_dir: str | None = None  # required: where the pairs go
    strong: Any = None  # a model, or {model, name, system_prompt, temperature, ...}
    weak: Any = None  # required: the model that answers in English, {model, name, ...}
    translator: Any = None  # required: the model that translates the weak answer, {model, name, ...}
    english_prompt: str = "translate"  # translate: the weak model answers the prompt translated into English;
    #                                    instruct: it answers the original prompt, told to answer in English
    english_instruction: str = DEFAULT_ENGLISH_INSTRUCTION  # the weak model's system prompt in `instruct` mode
    translate_template: str = DEFAULT_TEMPLATE  # {text}, {source} and {target} (language names)
    check_language: bool = True  # drop pairs whose chosen or rejected side is not detected as the prompt's language
    overwrite: bool = False  # replace an existing output_dir (refused otherwise)
    seed: int = 0  # seed of the sampling
    max_prompts: int | None = None  # use the first N prompts only (a quick look)
    max_new_tokens: int = 256  # tokens per answer and per translation
    temperature: float = 0.7  # sampling temperature of the answers
    batch_size: int = 8  # prompts per generation batch


@dataclass
class ContrastJob:
    args: ContrastArgs
    strong: RoleSpec
    weak: RoleSpec
    translator: RoleSpec
    raw: dict = field(default_factory=dict)


def _role(value: Any, key: str, source: str | None) -> RoleSpec:
    if isinstance(value, str) and value:
        value = {"model": value}
    if not isinstance(value, dict):
        raise ConfigError(source, key, "missing: a model (alias, path or hub id) or {model, name, system_prompt, ...}")
    if bool(value.get("model")) == bool(value.get("api")):
        raise ConfigError(
            source, f"{key}.model", "missing" if not value.get("api") else "give a model or an api endpoint, not both"
        )
    role = build_dataclass(RoleSpec, value, source, prefix=f"{key}.")
    if role.api is not None:
        from align.generation.api import APISpec

        build_dataclass(APISpec, role.api, source, prefix=f"{key}.api.")
    role.name = role.name or role.model or role.api["model"]
    for field_name in ("temperature", "max_new_tokens", "top_p"):
        v = getattr(role, field_name)
        if v is not None and (v < 0 or (field_name != "temperature" and v <= 0)):
            raise ConfigError(source, f"{key}.{field_name}", f"out of range: {v}")
    return role


def check_template(template: str, key: str, source: str | None, fields: set[str]) -> None:
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise ConfigError(source, key, f"not a valid template ({e})") from None
    unknown = used - fields
    if unknown:
        raise ConfigError(
            source,
            key,
            f"unknown placeholder {{{sorted(unknown)[0]}}} (expected "
            + ", ".join("{" + f + "}" for f in sorted(fields))
            + ")",
        )
    if "text" in fields and "text" not in used:
        raise ConfigError(source, key, "must contain {text}, where the text to translate goes")


def parse_contrast_config(raw: dict, source: str | None = None) -> ContrastJob:
    args = build_dataclass(ContrastArgs, raw, source)
    require(args, source, output_dir="where to write pairs.jsonl", prompts="a prompt dataset in the target languages")
    strong, weak = _role(args.strong, "strong", source), _role(args.weak, "weak", source)
    translator = _role(args.translator, "translator", source)
    if args.english_prompt not in ENGLISH_PROMPT_MODES:
        raise ConfigError(
            source, "english_prompt", f"expected one of {', '.join(ENGLISH_PROMPT_MODES)}, got {args.english_prompt!r}"
        )
    check_template(args.translate_template, "translate_template", source, {"text", "source", "target"})
    for key, role in (("strong", strong), ("weak", weak), ("translator", translator)):
        if role.system_prompt:
            check_template(role.system_prompt, f"{key}.system_prompt", source, {"language"})
    if args.max_prompts is not None and args.max_prompts < 1:
        raise ConfigError(source, "max_prompts", f"must be at least 1, got {args.max_prompts}")
    return ContrastJob(args, strong, weak, translator, raw)


# ------------------------------------------------------------------------------------------------ generation


def generation_args(job: ContrastJob, role: RoleSpec, default_temperature: float | None = None) -> GenerationArgs:
    a = job.args
    temperature = (
        role.temperature
        if role.temperature is not None
        else (default_temperature if default_temperature is not None else a.temperature)
    )
    return a.generation(
        max_new_tokens=role.max_new_tokens or a.max_new_tokens,
        temperature=temperature,
        top_p=a.top_p if role.top_p is None else role.top_p,
        max_batch_tokens=a.max_batch_tokens,
    )


def with_system(role: RoleSpec, chat: list[dict], lang: str, override: str | None = None) -> list[dict]:
    system = override if override is not None else role.system_prompt
    if not system or any(m["role"] == "system" for m in chat):
        return chat
    return [{"role": "system", "content": system.format(language=language_name(lang))}, *chat]


class ModelSlot:
    """Holds one model at a time: a phase whose model is the one already loaded (the strong model also translating,
    say) reuses it; any other model replaces it, freed first."""

    def __init__(self, job: ContrastJob, backend_name: str):
        self.job, self.backend_name = job, backend_name
        self.key, self.loaded = None, None

    def get(self, role: RoleSpec, api_log: Path):
        key = (role.model, role.adapter, str(role.api))
        if key != self.key:
            self.release()
            if role.api is not None:  # no tokenizer: batches are planned by characters
                from align.generation.api import APIBackend, APISpec

                self.loaded = APIBackend(APISpec(**role.api), log=api_log), None
            else:
                self.loaded = load_backend(
                    self.job.args.model_args(role.model),
                    self.backend_name,
                    role.adapter,
                    tensor_parallel_size=self.job.args.tensor_parallel_size,
                )
            self.key = key
        return self.loaded

    def release(self) -> None:
        if self.loaded is not None:
            self.loaded, self.key = None, None
            release_memory()


def run_phase(
    slot: ModelSlot,
    partial: Path,
    phase: str,
    role: RoleSpec,
    requests: list[tuple[str, list[dict]]],
    gen: GenerationArgs,
    state,
) -> dict[str, str]:
    """Answer every (key, chat) request with `role`'s model into `<phase>.jsonl`, the processes of `state`
    (accelerate's) sharing the batches; key → completion.

    The model is loaded only if some request is not answered yet (a resumed run skips finished phases).
    """
    rank, processes = state.process_index, state.num_processes

    def load():
        if state.is_main_process:
            print(f"{phase}: {role.name} answers", flush=True)
        return slot.get(role, shard_log(partial, f"api.{phase}", rank, processes))

    records = generate_sharded(
        partial,
        phase,
        [chat for _, chat in requests],
        gen,
        load,
        rank=rank,
        processes=processes,
        barrier=state.wait_for_everyone,
        keys=[key for key, _ in requests],
        desc=f"{phase} ({role.name})",
    )
    return {r["index"]: r["completions"][0] for r in records}


def translation_request(job: ContrastJob, role: RoleSpec, text: str, source_lang: str, target_lang: str) -> list[dict]:
    prompt = job.args.translate_template.format(
        text=text, source=language_name(source_lang), target=language_name(target_lang)
    )
    return with_system(role, [{"role": "user", "content": prompt}], target_lang)


# ------------------------------------------------------------------------------------------------ stage


def build_pairs(
    job: ContrastJob,
    prompts: list[dict],
    chosen: dict,
    weak: dict,
    rejected: dict,
    english_prompts: dict[str, list[dict]],
) -> tuple[list[dict], dict]:
    rows, drops = [], defaultdict(Counter)
    for i, prompt in enumerate(prompts):
        key, lang = str(i), prompt["lang"]
        spoken = base_language(lang)  # the detector tells no scripts apart
        good, bad = chosen[key].strip(), rejected[key].strip()
        # chosen outranks rejected by construction; the pair rule still refuses two equal texts
        reason = "empty_completion" if not good or not bad else choose_pair([good, bad], [1.0, 0.0]).dropped
        if reason is None and job.args.check_language:
            if detect_language(good)[0] != spoken:
                reason = "chosen_wrong_language"
            elif detect_language(bad)[0] != spoken:
                reason = "rejected_wrong_language"
        if reason:
            drops[lang][reason] += 1
            continue
        extra = {"prompt_english": english_prompts[key]} if key in english_prompts else {}
        rows.append(
            preference_record(
                prompt,
                good,
                bad,
                source="contrast",
                chosen_by=job.strong.name,
                rejected_by=job.weak.name,
                translated_by=job.translator.name,
                provenance="synthetic",
                chosen_provenance="synthetic",
                rejected_provenance="machine-translated",
                weak_english=weak[key],
                **extra,
            )
        )
    return rows, drops


def print_summary(metrics: dict, final: Path) -> None:
    rows = [
        [lang, str(m["prompts"]), str(m["pairs"]), ", ".join(f"{k} {v}" for k, v in m["dropped"].items()) or "-"]
        for lang, m in metrics["languages"].items()
    ]
    print_table("Contrast summary", ["lang", "prompts", "pairs", "dropped"], rows, left=(0, 3))
    skipped = metrics["skipped_english"]
    print(
        f"  {metrics['pairs']} pairs from {metrics['prompts']} prompts ({skipped} English prompt"
        f"{'' if skipped == 1 else 's'} skipped) → {final}",
        flush=True,
    )


def read_prompts(job: ContrastJob, source: str | None) -> tuple[list[dict], int]:
    """The non-English prompts (at most `max_prompts`) and how many English ones were skipped."""
    records = load_records(job.args.prompts, "prompt", seed=job.args.seed, source=source, key="prompts")
    prompts = [r for r in records if r["lang"] != "en"][: job.args.max_prompts or None]
    if not prompts:
        raise ConfigError(source, "prompts", "no prompt in a language other than English: nothing to contrast")
    return prompts, sum(r["lang"] == "en" for r in records)


def answer_phases(job: ContrastJob, prompts: list[dict], partial: Path, state) -> tuple[dict, dict, dict, dict]:
    """The four phases, one model loaded at a time: chosen, (prompts in English), weak English, rejected."""
    a = job.args
    slot = ModelSlot(job, choose_backend(a.backend))
    keys = [str(i) for i in range(len(prompts))]
    chosen = run_phase(
        slot,
        partial,
        "chosen",
        job.strong,
        [(k, with_system(job.strong, p["prompt"], p["lang"])) for k, p in zip(keys, prompts)],
        generation_args(job, job.strong),
        state,
    )
    english_prompts: dict[str, list[dict]] = {}
    translator_gen = generation_args(job, job.translator, default_temperature=0.0)
    if a.english_prompt == "translate":
        requests = [
            (f"{k}.{m}", translation_request(job, job.translator, message["content"], p["lang"], "en"))
            for k, p in zip(keys, prompts)
            for m, message in enumerate(p["prompt"])
        ]
        translated = run_phase(slot, partial, "prompt_english", job.translator, requests, translator_gen, state)
        for k, p in zip(keys, prompts):
            english_prompts[k] = [
                {"role": message["role"], "content": translated[f"{k}.{m}"]} for m, message in enumerate(p["prompt"])
            ]
        weak_requests = [(k, with_system(job.weak, english_prompts[k], "en")) for k in keys]
    else:
        weak_requests = [
            (k, with_system(job.weak, p["prompt"], "en", override=a.english_instruction)) for k, p in zip(keys, prompts)
        ]
    weak = run_phase(slot, partial, "weak_english", job.weak, weak_requests, generation_args(job, job.weak), state)
    rejected = run_phase(
        slot,
        partial,
        "rejected",
        job.translator,
        [(k, translation_request(job, job.translator, weak[k], "en", p["lang"])) for k, p in zip(keys, prompts)],
        translator_gen,
        state,
    )
    slot.release()
    return chosen, weak, rejected, english_prompts


def contrast_metrics(job: ContrastJob, prompts: list[dict], rows: list[dict], drops: dict, skipped: int) -> dict:
    langs, made = Counter(p["lang"] for p in prompts), Counter(r["lang"] for r in rows)
    return {
        "prompts": len(prompts),
        "pairs": len(rows),
        "skipped_english": skipped,
        "english_prompt": job.args.english_prompt,
        "check_language": job.args.check_language,
        "strong": job.strong.name,
        "weak": job.weak.name,
        "translator": job.translator.name,
        "languages": {
            lang: {"prompts": n, "pairs": made[lang], "dropped": dict(drops[lang])} for lang, n in langs.most_common()
        },
    }


def run_contrast(raw: dict, source: str | None = None) -> Path:
    """The `contrast` stage. Under `accelerate launch` the processes share each phase's batches; the main process
    builds the pairs and writes the output."""
    from align.models.loading import process_state

    job = parse_contrast_config(raw, source)
    state = process_state()
    run = StageRun(
        job.args.output_dir,
        resolve_recipe(raw, ContrastArgs, source),
        stage="contrast",
        overwrite=job.args.overwrite,
        source=source,
        is_main=state.is_main_process,
    )
    check_models(
        [
            (f"{key}.model", role.model, role.adapter)
            for key, role in (("strong", job.strong), ("weak", job.weak), ("translator", job.translator))
            if role.model
        ],
        source,
        trust_remote_code=job.args.trust_remote_code,
    )
    prompts, skipped = read_prompts(job, source)
    resumed = run.prepare_shared(state)
    if state.is_main_process:
        print(
            f"Contrast: {len(prompts)} prompts; chosen by {job.strong.name}, rejected by {job.weak.name} in "
            f"English translated by {job.translator.name}" + (" (resuming)" if resumed else ""),
            flush=True,
        )
    chosen, weak, rejected, english_prompts = answer_phases(job, prompts, run.partial, state)
    if not state.is_main_process:
        return run.final
    rows, drops = build_pairs(job, prompts, chosen, weak, rejected, english_prompts)
    if not rows:
        raise PolyalignError(
            "contrast: no pair survived ("
            + ", ".join(f"{k} {v}" for k, v in sum(drops.values(), Counter()).items())
            + "); with check_language, the strong "
            "model must answer in the prompt's language and the translator translate into it"
        )
    write_jsonl(run.partial / "pairs.jsonl", rows)
    metrics = contrast_metrics(job, prompts, rows, drops, skipped)
    run.finish(
        metrics,
        drop=(
            "chosen.jsonl",
            "prompt_english.jsonl",
            "weak_english.jsonl",
            "rejected.jsonl",
            "api.*.jsonl",
            "*.rank*.jsonl",
        ),
    )
    print_summary(metrics, run.final)
    return run.final
