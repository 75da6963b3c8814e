"""README's recipe-key tables, generated from the declarations (align.core.declared, the pipeline's PIPELINE_KEYS)
so that README cannot drift from the code: `python -m align.readme_keys README.md` rewrites each table between its
`<!-- keys:<stage> -->` and `<!-- /keys:<stage> -->` markers; tests/test_readme_keys.py fails when they differ."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import yaml

from align.cli import COMMANDS, Command
from align.core.declared import declared_keys


def stages() -> list[str]:
    """The commands whose keys are declared, in `polyalign --help`'s order."""
    return [name for name, command in COMMANDS.items() if command.keys]


def _cell(text: str) -> str:
    """Text for one table cell: on one line, its pipes and angle brackets escaped."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "\\<")


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()


def _default(value: str) -> str:
    """A declared default (its repr) as a recipe writes it."""
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    if value in (None, ""):
        return ""
    text = _yaml(value).replace("|", "\\|")
    return f"`{text}`"


def table(name: str) -> str:
    """The block README holds between the markers of stage `name`."""
    command = COMMANDS[name]
    module, _, attr = command.keys.partition(":")
    declared = getattr(importlib.import_module(module), attr)
    if isinstance(declared, dict):
        return _pipeline_table(module, declared)
    keys = declared_keys(declared)
    rows = [f"| `{k.name}` | {'**required**' if k.required else _default(k.default)} | {_cell(k.text)} |" for k in keys]
    lines = [
        f"<details><summary><code>polyalign {name}</code>: {len(keys)} keys</summary>",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
        *rows,
    ]
    if command.trl:
        lines += ["", _trl_note(name, command, declared)]
    return "\n".join([*lines, "", "</details>"])


def _trl_note(name: str, command: Command, declared) -> str:
    from align.training.keys import TRAINING_DEFAULTS

    where = f"under `{command.trl_under}:`" if command.trl_under else "at the top level"
    changed = ", ".join(f"`{k}: {_yaml(v)}`" for k, v in getattr(declared, "trl_defaults", TRAINING_DEFAULTS).items())
    return (
        f"Every other key ({where}) is a field of trl's `{command.trl}` (`polyalign {name} --help --all` lists them); "
        f"polyalign's defaults differ from trl's for {changed}."
    )


def _pipeline_table(module: str, keys: dict) -> str:
    pipeline = importlib.import_module(module)

    def row(key: str, text: str, default="") -> str:
        required = text.startswith("required")
        default = "**required**" if required else (_default(str(default)) if default != "" else "")
        return f"| `{key}` | {default} | {_cell(text.removeprefix('required: '))} |"

    return "\n".join(
        [
            f"<details><summary><code>polyalign run</code>: {len(keys)} keys and {len(pipeline.SECTIONS)} stage "
            "sections</summary>",
            "",
            "| key | default | meaning |",
            "|---|---|---|",
            *(row(k, text, pipeline.PIPELINE_DEFAULTS.get(k, "")) for k, text in keys.items()),
            "",
            "| section | | holds |",
            "|---|---|---|",
            *(row(k, text) for k, text in pipeline.SECTIONS.items()),
            "",
            "</details>",
        ]
    )


def markers(name: str) -> tuple[str, str]:
    return f"<!-- keys:{name} -->", f"<!-- /keys:{name} -->"


def _pattern(name: str) -> re.Pattern:
    start, end = markers(name)
    return re.compile(re.escape(start) + r"\n(.*?)\n?" + re.escape(end), re.S)


def blocks(readme: str) -> dict[str, str | None]:
    """Each stage's block as README holds it (None where its markers are missing)."""
    found = {}
    for name in stages():
        match = _pattern(name).search(readme)
        found[name] = match.group(1) if match else None
    return found


def rewrite(readme: str) -> str:
    """README with every stage's block regenerated; a stage without markers is an error naming them."""
    for name in stages():
        match = _pattern(name).search(readme)
        start, end = markers(name)
        if match is None:
            raise SystemExit(f"README has no {start} ... {end}: add the markers where the table goes")
        readme = readme[: match.start()] + f"{start}\n{table(name)}\n{end}" + readme[match.end() :]
    return readme


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m align.readme_keys README.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    text = path.read_text(encoding="utf-8")
    new = rewrite(text)
    if new != text:
        tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed over README
        tmp.write_text(new, encoding="utf-8")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
