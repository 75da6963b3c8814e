"""README's recipe-key tables are the declarations' (align.readme_keys): a key added, renamed, defaulted or helped
differently in the code and not in README fails here, naming the stage and the first line that differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.readme_keys import blocks, markers, rewrite, stages, table

README = Path(__file__).resolve().parents[1] / "README.md"


def first_difference(held: str, generated: str) -> str:
    old, new = held.splitlines(), generated.splitlines()
    for i, (a, b) in enumerate(zip(old, new)):
        if a != b:
            return f"line {i + 1}: README has {a!r}, the code gives {b!r}"
    i = min(len(old), len(new))
    return f"line {i + 1}: " + (f"README has {old[i]!r} more" if len(old) > i else f"README lacks {new[i]!r}")


@pytest.mark.parametrize("name", stages())
def test_readme_key_table_matches_the_declarations(name):
    held = blocks(README.read_text(encoding="utf-8"))[name]
    start, end = markers(name)
    assert held is not None, f"README has no {start} ... {end} (python -m align.readme_keys README.md fills it)"
    generated = table(name)
    assert held == generated, (
        f"README's keys of `polyalign {name}` differ from the code, {first_difference(held, generated)}; "
        "run python -m align.readme_keys README.md"
    )


def test_a_drifted_table_is_found_and_rewritten():
    readme = README.read_text(encoding="utf-8")
    drifted = readme.replace("| `packed_attention` | `auto` |", "| `packed_attention` | `rows` |", 1)
    assert drifted != readme
    assert blocks(drifted)["sft"] != table("sft")
    assert rewrite(drifted) == readme
    start, end = markers("sft")
    with pytest.raises(SystemExit, match="keys:sft"):
        rewrite(readme.replace(start, ""))
