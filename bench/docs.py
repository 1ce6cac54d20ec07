"""The documents quote the results, never copy them: README.md and docs/*.md hold the tables of the committed results
(results/<suite>/*.md, generated from each suite's store) between markers,

    <!-- quote results/default/leaderboard.md "Reward: digit" -->
    ...the quoted tables...
    <!-- end quote -->

and `make docs` (`python -m bench.docs`) rewrites what lies between them. A test checks that every block equals what
it quotes, and another that the quoted files equal what their stores generate, so a table in a document cannot drift
from the store it comes from.

A marker names a file and, optionally, a section of it (a heading's text, quoted): the tables directly under that
heading, or with no section every table of the file, each under its heading in bold when there are several.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/results.md")
_BLOCK = re.compile(
    r'(?P<open><!-- quote (?P<source>\S+)(?: "(?P<section>[^"]+)")? -->\n)(?P<body>.*?)(?P<close><!-- end quote -->)',
    re.DOTALL,
)
_HEADING = re.compile(r"^#+ (.*)$")


def tables(text: str) -> list[tuple[str, str]]:
    """(heading, table) for each markdown table of `text`, in order: the table's lines, and the text of the nearest
    heading above it."""
    found, heading, current = [], "", []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(line)
            continue
        if current:
            found.append((heading, "\n".join(current)))
            current = []
        if match := _HEADING.match(line):
            heading = match[1]
    return found


def quote(source: Path, section: str | None) -> str:
    """The body of a block quoting `source` (see the module docstring)."""
    if not source.exists():
        raise ValueError(f"a document quotes {source}, which does not exist")
    found = tables(source.read_text())
    if section is not None:
        found = [(heading, table) for heading, table in found if heading == section]
        if not found:
            headings = sorted({heading for heading, _ in tables(source.read_text())})
            raise ValueError(f"{source} has no table under {section!r}; its tables' headings: {headings}")
        return "\n\n".join(table for _, table in found) + "\n"
    if len(found) == 1:
        return found[0][1] + "\n"
    return "\n\n".join(f"**{heading}**\n\n{table}" for heading, table in found) + "\n"


def refreshed(text: str, root: Path = ROOT) -> str:
    """`text` with every quote block's body rewritten from what it quotes."""

    def body(match: re.Match) -> str:
        return match["open"] + quote(root / match["source"], match["section"]) + match["close"]

    return _BLOCK.sub(body, text)


def blocks(text: str) -> list[tuple[str, str | None]]:
    """(source, section) of every quote block of `text`."""
    return [(match["source"], match["section"]) for match in _BLOCK.finditer(text)]


def main() -> int:
    for name in DOCUMENTS:
        path = ROOT / name
        text = path.read_text()
        new = refreshed(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote the quoted tables of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
