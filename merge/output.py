"""Everything in a merged model's directory besides the weights: config, generation config, tokenizer, chat template,
and a model card that says what was merged, with which weights, how, and by which command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from align.core.io import write_json
from align.models.templates import builtin_templates
from merge.config import MergeError, MergeSpec


def write_config(source: Path, out: Path, *, dtype: str | None, tied: bool | None) -> None:
    """config.json of `source` (the donor, or the output itself when mergekit wrote it: mergekit keeps the donor's
    dtype key and tying as they were) with the output's dtype and embedding tying."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    update_config(config, dtype=dtype, tied=tied)
    write_json(out / "config.json", config)


def update_config(config: dict, *, dtype: str | None, tied: bool | None) -> None:
    if dtype:
        config["dtype"] = dtype  # transformers 5's key; older readers look for torch_dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
    if tied is not None:
        target = config["text_config"] if "tie_word_embeddings" not in config and "text_config" in config else config
        target["tie_word_embeddings"] = tied
    config.pop("_name_or_path", None)


def copy_generation_config(donor: Path, out: Path) -> None:
    source = donor / "generation_config.json"
    if source.is_file() and not (out / "generation_config.json").exists():
        (out / "generation_config.json").write_bytes(source.read_bytes())


def read_chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        template = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(template, list):  # [{name, template}, ...]: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template or None


def resolve_chat_template(spec: MergeSpec, input_dirs: list[Path]) -> str | None:
    """`chat_template`: 'auto' (the template most inputs share), a mergekit template name, or a Jinja string."""
    value = spec.chat_template
    if value is None:
        return None
    if value == "auto":
        found = [t.strip() for t in (read_chat_template(d) for d in input_dirs) if t]
        if not found:
            raise MergeError(
                "chat_template 'auto': none of the inputs has a chat template; name one "
                f"({', '.join(sorted(builtin_templates()))}) or give a Jinja template"
            )
        return Counter(found).most_common(1)[0][0]
    named = builtin_templates()
    if value in named:
        return named[value].read_text(encoding="utf-8")
    if "{" in value:
        return value
    raise MergeError(
        f"chat_template '{value}': not 'auto', a known template ({', '.join(sorted(named))}) or a Jinja template string"
    )


def write_chat_template(out: Path, template: str) -> None:
    """chat_template.jinja takes precedence over tokenizer_config.json's entry in transformers; drop the latter so
    the two cannot disagree."""
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    config_file = out / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            write_json(config_file, config)


def write_card(
    out: Path,
    spec: MergeSpec,
    rows: list[dict],
    *,
    title: str,
    engine: str,
    dtype: str | None,
    tokenizer_from: str,
    config_from: str,
    command: str,
    config_text: str,
) -> None:
    """README.md: the inputs and their weights, the method, dtype, where tokenizer and config came from, the
    command, and the config itself (which `mergekit-yaml` also runs)."""
    normalize = spec.normalize
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- merge",
        "- polyalign",
        "---",
        "",
        f"# {title}",
        "",
        f"A merge of {len(rows)} checkpoints made with polyalign: method **{spec.method}** ({engine})"
        + (
            f", weights {'normalised to sum to 1' if normalize else 'used as given (normalize: false)'}"
            if spec.method == "linear"
            else ""
        )
        + ".",
        "",
        "| # | input | weight | share | notes |",
        "|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        share = "" if row.get("share") is None else f"{row['share']:.4g}"
        weight = "" if row.get("weight") is None else f"{row['weight']}"
        lines.append(f"| {i} | `{row['ref']}` | {weight} | {share} | {row.get('note', '')} |")
    lines += [
        "",
        f"- dtype: {dtype or 'as the inputs'}",
        f"- config and generation config from: `{config_from}`",
        f"- tokenizer from: `{tokenizer_from}`"
        + (f"; chat template: {_template_note(spec.chat_template)}" if spec.chat_template else ""),
        f"- command: `{command}`",
        "",
        "## Configuration",
        "",
        "```yaml",
        config_text.rstrip(),
        "```",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def _template_note(value: str) -> str:
    return f"`{value}`" if "{" not in value else "a custom Jinja template (chat_template.jinja)"


def write_record(plan, out: Path, *, title: str, engine: str, dtype: str | None, command: str) -> list[dict]:
    """README.md and merge_config.yaml of a merged model (`plan`: the engines' Plan); returns the card's rows of
    inputs (ref, weight, share, note)."""
    spec = plan.spec
    weights = spec.scalar_weights() if spec.method == "linear" else None
    total = sum(weights) if weights else None
    rows = []
    for i, (model, ckpt) in enumerate(zip(spec.inputs(), plan.inputs)):
        notes = []
        if model.where == "base_model" or model.ref == spec.base_model:
            notes.append("base model")
        if ckpt.adapter is not None:
            notes.append(f"LoRA adapter merged into its base `{ckpt.base_ref}` (peft merge_and_unload) before merging")
        elif str(ckpt.path) != model.ref:
            notes.append(f"`{ckpt.path}`")
        share = None if not weights else weights[i] / total if spec.normalize else weights[i]
        rows.append({"ref": model.ref, "weight": spec.weight(model), "share": share, "note": "; ".join(notes)})
    tokenizer_from = plan.tokenizer_ref or str(spec.tokenizer_source or (spec.tokenizer or {}).get("source"))
    write_card(
        out,
        spec,
        rows,
        title=title,
        engine=engine,
        dtype=dtype,
        tokenizer_from=tokenizer_from,
        config_from=plan.donor.ref,
        command=command,
        config_text=spec.to_yaml(),
    )
    (out / "merge_config.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    return rows
