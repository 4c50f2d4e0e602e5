"""BENCHMARKS.md is shared by several benchmark scripts; each owns one marked section."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, start: str, end: str, block: str) -> None:
    """Write `start + block + end` in place of the old marked section (or append it)."""
    block = f"{start}\n{block}{end}\n"
    old = path.read_text() if path.is_file() else "# Benchmarks\n\n"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        new = head + block + (("\n" + tail) if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
