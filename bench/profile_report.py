"""Summarise a py-spy profile (``--format raw``: collapsed stacks) as markdown tables.

Prints the functions with the most samples on top of the stack (self), the most samples anywhere
in the stack (inclusive), and the share of samples per package, so that "where does the time go"
has a short answer.

Usage: .venv/bin/python bench/profile_report.py PROFILE.txt [--top N]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# A py-spy frame: "function (path/to/file.py:123)"; the line number is dropped to group by function.
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
PACKAGES = ("socketio", "engineio", "aiohttp", "asyncio", "uvloop", "aiosqlite", "sqlite3", "orjson", "jwt",
            "bcrypt", "logging", "json", "hq", "concurrent", "threading", "multidict", "yarl", "datetime")


def parse(path: Path) -> list[tuple[list[str], int]]:
    """The stacks (outermost frame first) and their sample counts."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function(frame: str) -> str:
    """``module.py:function`` for a frame (short path: the last two parts)."""
    match = FRAME.match(frame)
    if not match:
        return frame
    parts = Path(match["file"]).parts
    return f"{'/'.join(parts[-2:])}:{match['func']}"


def package(frame: str) -> str:
    """The package a frame's file belongs to (one of PACKAGES, else "other")."""
    match = FRAME.match(frame)
    parts = Path(match["file"]).parts if match else ()
    for part in reversed(parts[:-1]):
        if part in PACKAGES:
            return part
    name = Path(parts[-1]).stem if parts else ""
    return name if name in PACKAGES else "other"


def summarize(stacks: list[tuple[list[str], int]]) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """Total samples, self samples per function, inclusive samples per function, self per package."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for frames, count in stacks:
        total += count
        leaf = frames[-1]
        own[function(leaf)] += count
        packages[package(leaf)] += count
        for name in {function(f) for f in frames}:
            inclusive[name] += count
    return total, own, inclusive, packages


def table(title: str, counter: Counter[str], total: int, top: int) -> str:
    """A markdown table of the ``top`` entries with their share of all samples."""
    rows = [f"| {title} | samples | share |", "| --- | ---: | ---: |"]
    rows += [f"| `{name}` | {n} | {100 * n / total:.1f} % |" for name, n in counter.most_common(top)]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print the report for one profile file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    total, own, inclusive, packages = summarize(parse(args.profile))
    if total == 0:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples\n")
    print(table("package (self)", packages, total, args.top), end="\n\n")
    print(table("function (self)", own, total, args.top), end="\n\n")
    print(table("function (inclusive)", inclusive, total, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
