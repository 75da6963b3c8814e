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
"""

from __future__ import annotations

import logging
import shutil
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_dataclass, config_hash
from .data import load_records
from .data.languages import detect_language, language_name
from .errors import ConfigError, PolyalignError
from .generate import GenerationArgs, choose_backend, iter_batches, load_backend
from .io import AppendLog, partial_dir, promote, write_json, write_jsonl
from .models import ModelArgs, model_path, release_memory

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = ("Translate the following text from {source} to {target}. Reply with the translation only, "
                    "nothing else.\n\n{text}")
DEFAULT_ENGLISH_INSTRUCTION = "Always answer in English, whatever the language of the question."
ENGLISH_PROMPT_MODES = ("translate", "instruct")


@dataclass
class RoleSpec:
    """One model of the pipeline. Unset generation keys take the stage's values ({language} in `system_prompt`
    becomes the prompt's language name)."""

    model: str
    name: str | None = None  # how chosen_by/rejected_by name it (default: the model)
    adapter: str | None = None  # a LoRA adapter served on `model`
    system_prompt: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None


@dataclass
class ContrastArgs:
    prompts: Any = None
    output_dir: str | None = None
    strong: Any = None  # a model, or {model, name, system_prompt, temperature, ...}
    weak: Any = None
    translator: Any = None
    english_prompt: str = "translate"  # translate: the weak model answers the prompt translated into English;
    #                                    instruct: it answers the original prompt, told to answer in English
    english_instruction: str = DEFAULT_ENGLISH_INSTRUCTION  # the weak model's system prompt in `instruct` mode
    translate_template: str = DEFAULT_TEMPLATE  # {text}, {source} and {target} (language names)
    check_language: bool = True  # drop pairs whose chosen or rejected side is not detected as the prompt's language
    overwrite: bool = False
    seed: int = 0
    max_prompts: int | None = None
    # generation defaults (the translator is greedy unless its own temperature says otherwise)
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 8
    backend: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    trust_remote_code: bool = False


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
    if not value.get("model"):
        raise ConfigError(source, f"{key}.model", "missing")
    role = build_dataclass(RoleSpec, value, source, prefix=f"{key}.")
    role.name = role.name or role.model
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
        raise ConfigError(source, key, f"unknown placeholder {{{sorted(unknown)[0]}}} (expected "
                                       + ", ".join("{" + f + "}" for f in sorted(fields)) + ")")
    if "text" in fields and "text" not in used:
        raise ConfigError(source, key, "must contain {text}, where the text to translate goes")


def parse_contrast_config(raw: dict, source: str | None = None) -> ContrastJob:
    args = build_dataclass(ContrastArgs, raw, source)
    if not args.output_dir:
        raise ConfigError(source, "output_dir", "missing: where to write pairs.jsonl")
    if args.prompts is None:
        raise ConfigError(source, "prompts", "missing: a prompt dataset in the target languages")
    strong, weak = _role(args.strong, "strong", source), _role(args.weak, "weak", source)
    translator = _role(args.translator, "translator", source)
    if args.english_prompt not in ENGLISH_PROMPT_MODES:
        raise ConfigError(source, "english_prompt", f"expected one of {', '.join(ENGLISH_PROMPT_MODES)}, got "
                                                    f"{args.english_prompt!r}")
    check_template(args.translate_template, "translate_template", source, {"text", "source", "target"})
    for key, role in (("strong", strong), ("weak", weak), ("translator", translator)):
        if role.system_prompt:
            check_template(role.system_prompt, f"{key}.system_prompt", source, {"language"})
    if args.max_prompts is not None and args.max_prompts < 1:
        raise ConfigError(source, "max_prompts", f"must be at least 1, got {args.max_prompts}")
    GenerationArgs(backend=args.backend, temperature=args.temperature, top_p=args.top_p,
                   batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)  # validates them
    return ContrastJob(args, strong, weak, translator, raw)


def check_models(job: ContrastJob, source: str | None) -> None:
    """Every model must resolve to a loadable config before any generation starts."""
    from transformers import AutoConfig

    for key, role in (("strong", job.strong), ("weak", job.weak), ("translator", job.translator)):
        try:
            path = model_path(role.model)
            if not (Path(path) / "adapter_config.json").is_file():
                AutoConfig.from_pretrained(path, trust_remote_code=job.args.trust_remote_code)
            if role.adapter and not (Path(model_path(role.adapter)) / "adapter_config.json").is_file():
                raise OSError(f"{role.adapter}: no adapter_config.json")
        except (OSError, ValueError, PolyalignError) as e:
            raise ConfigError(source, f"{key}.model", f"cannot load model {role.model!r} "
                                                      f"({str(e).splitlines()[0]})") from None


# ------------------------------------------------------------------------------------------------ generation


def load_role(job: ContrastJob, role: RoleSpec, backend: str):
    """(generation backend, tokenizer) for one model."""
    model_args = ModelArgs(model=role.model, dtype=job.args.dtype, attn_implementation=job.args.attn_implementation,
                           trust_remote_code=job.args.trust_remote_code)
    return load_backend(model_args, backend, role.adapter)


def generation_args(job: ContrastJob, role: RoleSpec, default_temperature: float | None = None) -> GenerationArgs:
    a = job.args
    temperature = role.temperature if role.temperature is not None else (
        default_temperature if default_temperature is not None else a.temperature)
    return GenerationArgs(max_new_tokens=role.max_new_tokens or a.max_new_tokens, temperature=temperature,
                          top_p=a.top_p if role.top_p is None else role.top_p, batch_size=a.batch_size, seed=a.seed,
                          backend=a.backend)


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

    def get(self, role: RoleSpec):
        key = (role.model, role.adapter)
        if key != self.key:
            self.release()
            self.loaded, self.key = load_role(self.job, role, self.backend_name), key
        return self.loaded

    def release(self) -> None:
        if self.loaded is not None:
            self.loaded, self.key = None, None
            release_memory()


def run_phase(slot: ModelSlot, partial: Path, phase: str, role: RoleSpec, requests: list[tuple[str, list[dict]]],
              gen: GenerationArgs) -> dict[str, str]:
    """Answer every (key, chat) request with `role`'s model, appending to `<phase>.jsonl`; key → completion.

    The model is loaded only if some request is not answered yet (a resumed run skips finished phases).
    """
    with AppendLog(partial / f"{phase}.jsonl", key=lambda r: r["key"]) as out:
        done = set(out.done)
        todo = [k for k, _ in requests if k not in done]
        if todo:
            print(f"{phase}: {role.name} answers {len(todo)} of {len(requests)}", flush=True)
            backend, tokenizer = slot.get(role)
            chats = [chat for _, chat in requests]
            for chunk in iter_batches(backend, tokenizer, chats, gen, skip=lambda i: requests[i][0] in done,
                                      desc=f"{phase} ({role.name})"):
                for i, completions in chunk:
                    out.append({"key": requests[i][0], "completion": completions[0]})
        return {r["key"]: r["completion"] for r in out.records}


def translation_request(job: ContrastJob, role: RoleSpec, text: str, source_lang: str, target_lang: str
                        ) -> list[dict]:
    prompt = job.args.translate_template.format(text=text, source=language_name(source_lang),
                                                target=language_name(target_lang))
    return with_system(role, [{"role": "user", "content": prompt}], target_lang)


# ------------------------------------------------------------------------------------------------ stage


def build_pairs(job: ContrastJob, prompts: list[dict], chosen: dict, weak: dict, rejected: dict,
                english_prompts: dict[str, list[dict]]) -> tuple[list[dict], dict]:
    rows, drops = [], defaultdict(Counter)
    for i, prompt in enumerate(prompts):
        key, lang = str(i), prompt["lang"]
        good, bad = chosen[key].strip(), rejected[key].strip()
        reason = None
        if not good or not bad:
            reason = "empty_completion"
        elif good == bad:
            reason = "identical"
        elif job.args.check_language:
            if detect_language(good)[0] != lang:
                reason = "chosen_wrong_language"
            elif detect_language(bad)[0] != lang:
                reason = "rejected_wrong_language"
        if reason:
            drops[lang][reason] += 1
            continue
        row = {"prompt": prompt["prompt"], "chosen": [{"role": "assistant", "content": good}],
               "rejected": [{"role": "assistant", "content": bad}], "lang": lang, "id": prompt["id"],
               "source": "contrast", "chosen_by": job.strong.name, "rejected_by": job.weak.name,
               "translated_by": job.translator.name, "provenance": "synthetic", "chosen_provenance": "synthetic",
               "rejected_provenance": "machine-translated", "weak_english": weak[key]}
        if key in english_prompts:
            row["prompt_english"] = english_prompts[key]
        rows.append(row)
    return rows, drops


def print_summary(metrics: dict, final: Path) -> None:
    print("\nContrast summary", flush=True)
    header = ["lang", "prompts", "pairs", "dropped"]
    rows = [[lang, str(m["prompts"]), str(m["pairs"]),
             ", ".join(f"{k} {v}" for k, v in m["dropped"].items()) or "-"] for lang, m in metrics["languages"].items()]
    widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)]
    for cells in [header, *rows]:
        print("  " + "  ".join(c.ljust(w) if k in (0, 3) else c.rjust(w)
                               for k, (c, w) in enumerate(zip(cells, widths))).rstrip(), flush=True)
    skipped = metrics["skipped_english"]
    print(f"  {metrics['pairs']} pairs from {metrics['prompts']} prompts ({skipped} English prompt"
          f"{'' if skipped == 1 else 's'} skipped) → {final}", flush=True)


def run_contrast(raw: dict, source: str | None = None) -> Path:
    job = parse_contrast_config(raw, source)
    a = job.args
    final = Path(a.output_dir)
    if final.exists() and not a.overwrite:
        raise ConfigError(source, "output_dir", f"{final} already exists (pass --overwrite to replace it)")
    check_models(job, source)
    records = load_records(a.prompts, "prompt", seed=a.seed)
    prompts = [r for r in records if r["lang"] != "en"]
    skipped_english = len(records) - len(prompts)
    if a.max_prompts:
        prompts = prompts[: a.max_prompts]
    if not prompts:
        raise ConfigError(source, "prompts", "no prompt in a language other than English: nothing to contrast")

    partial = partial_dir(final)
    digest = config_hash({k: v for k, v in job.raw.items() if k != "overwrite"})
    marker = partial / "polyalign_config_hash"
    if partial.exists() and (not marker.exists() or marker.read_text().strip() != digest):
        log.warning("%s holds a run with another config: starting over", partial)
        shutil.rmtree(partial)
    resumed = partial.exists()
    partial.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)
    print(f"Contrast: {len(prompts)} prompts; chosen by {job.strong.name}, rejected by {job.weak.name} in English "
          f"translated by {job.translator.name}" + (" (resuming)" if resumed else ""), flush=True)

    slot = ModelSlot(job, choose_backend(a.backend))
    keys = [str(i) for i in range(len(prompts))]
    chosen = run_phase(slot, partial, "chosen", job.strong, [
        (k, with_system(job.strong, p["prompt"], p["lang"])) for k, p in zip(keys, prompts)],
        generation_args(job, job.strong))

    english_prompts: dict[str, list[dict]] = {}
    translator_gen = generation_args(job, job.translator, default_temperature=0.0)
    if a.english_prompt == "translate":
        requests = [(f"{k}.{m}", translation_request(job, job.translator, message["content"], p["lang"], "en"))
                    for k, p in zip(keys, prompts) for m, message in enumerate(p["prompt"])]
        translated = run_phase(slot, partial, "prompt_english", job.translator, requests, translator_gen)
        for k, p in zip(keys, prompts):
            english_prompts[k] = [{"role": message["role"], "content": translated[f"{k}.{m}"]}
                                  for m, message in enumerate(p["prompt"])]
        weak_requests = [(k, with_system(job.weak, english_prompts[k], "en")) for k in keys]
    else:
        weak_requests = [(k, with_system(job.weak, p["prompt"], "en", override=a.english_instruction))
                         for k, p in zip(keys, prompts)]
    weak = run_phase(slot, partial, "weak_english", job.weak, weak_requests, generation_args(job, job.weak))
    rejected = run_phase(slot, partial, "rejected", job.translator, [
        (k, translation_request(job, job.translator, weak[k], "en", p["lang"])) for k, p in zip(keys, prompts)],
        translator_gen)
    slot.release()

    rows, drops = build_pairs(job, prompts, chosen, weak, rejected, english_prompts)
    if not rows:
        shutil.rmtree(partial, ignore_errors=True)
        raise PolyalignError("contrast: no pair survived (" + ", ".join(
            f"{k} {v}" for k, v in sum(drops.values(), Counter()).items()) + "); with check_language, the strong "
            "model must answer in the prompt's language and the translator translate into it")
    langs = Counter(p["lang"] for p in prompts)
    made = Counter(r["lang"] for r in rows)
    metrics = {"prompts": len(prompts), "pairs": len(rows), "skipped_english": skipped_english,
               "english_prompt": a.english_prompt, "check_language": a.check_language,
               "strong": job.strong.name, "weak": job.weak.name, "translator": job.translator.name,
               "languages": {lang: {"prompts": n, "pairs": made[lang], "dropped": dict(drops[lang])}
                             for lang, n in langs.most_common()}}
    write_jsonl(partial / "pairs.jsonl", rows)
    write_json(partial / "metrics.json", metrics)
    write_json(partial / "polyalign_recipe.json", {"stage": "contrast", "config": job.raw, "source": source})
    for path in [*(partial / f"{phase}.jsonl" for phase in ("chosen", "prompt_english", "weak_english", "rejected")),
                 marker]:
        path.unlink(missing_ok=True)
    promote(partial, final, overwrite=a.overwrite)
    print_summary(metrics, final)
    return final
