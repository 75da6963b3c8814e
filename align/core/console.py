"""What a stage prints when it ends: a titled list of key/value rows, or a table with aligned columns."""

from __future__ import annotations

from collections.abc import Sequence


def print_rows(title: str, rows: Sequence[tuple[str, object]]) -> None:
    """`key  value` lines under a title (a training stage's summary)."""
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}", flush=True)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}", flush=True)


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], *, left: Sequence[int] = (0,)
) -> None:
    """Columns padded to their widest cell: text columns (`left`) flush left, numbers flush right."""
    widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)]
    print(f"\n{title}", flush=True)
    for cells in [header, *rows]:
        print(
            "  "
            + "  ".join(
                c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))
            ).rstrip(),
            flush=True,
        )
