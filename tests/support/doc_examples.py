"""The outputs that README.md and docs/ show, marked so that tests compare them with what the
commands really print.

A shown output is the fenced block right after a line `<!-- pgne-example: NAME -->`. A test
runs the command and calls `assert_shows(NAME, real_output)`. What varies from run to run is
normalised on both sides before comparing: ports, sample values, the version. A line `...` in
a block stands for lines left out; without one, the block is the whole output."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- pgne-example: ([\w-]+) -->\n```[\w-]*\n(.*?)^```$", re.MULTILINE | re.DOTALL)
ELISION = "..."


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shown_examples() -> dict[str, str]:
    """{name: the block's text} over README.md and docs/*.md; a name used twice is an error."""
    found: dict[str, str] = {}
    for path in documents():
        for name, body in MARKER.findall(path.read_text(encoding="utf-8")):
            assert name not in found, f"example {name!r} is marked twice ({path.name})"
            found[name] = body
    return found


def normalise(text: str) -> list[str]:
    """The lines of `text` with what differs between runs replaced by fixed words."""
    text = re.sub(r"\b(127\.0\.0\.1|localhost):\d+", r"\1:PORT", text)
    text = re.sub(r"\bport=\d+", "port=PORT", text)
    text = re.sub(r"\bpgne \d+\.\d+\.\d+\S*:", "pgne VERSION:", text)
    # a sample's value: the number after a metric line's labels
    text = re.sub(r"^([a-zA-Z_:][\w:]*(?:\{.*\})?) -?[\d.e+-]+$", r"\1 VALUE", text, flags=re.MULTILINE)
    return text.rstrip("\n").splitlines()


def mismatch(shown: str, real: str) -> str | None:
    """None if `shown` (with its `...` lines) is what `real` prints, else why not."""
    shown_lines, real_lines = normalise(shown), normalise(real)
    chunks: list[list[str]] = [[]]
    for line in shown_lines:
        if line.strip() == ELISION:
            chunks.append([])
        else:
            chunks[-1].append(line)
    if len(chunks) == 1:
        return None if shown_lines == real_lines else "the block is not the whole output"
    anchored_start, anchored_end = bool(chunks[0]), bool(chunks[-1])
    position = 0
    for index, chunk in enumerate(c for c in chunks if c):
        at = next((i for i in range(position, len(real_lines) - len(chunk) + 1)
                   if real_lines[i:i + len(chunk)] == chunk), None)
        if at is None:
            return "these lines are not in the output, in this order:\n" + "\n".join(chunk)
        if index == 0 and anchored_start and at != 0:
            return "the block's first lines are not where the output starts"
        position = at + len(chunk)
    if anchored_end and position != len(real_lines):
        return "the block's last lines are not where the output ends"
    return None


def assert_shows(name: str, real: str) -> None:
    shown = shown_examples()[name]
    problem = mismatch(shown, real)
    assert problem is None, (f"the documented output {name!r} is not what the command prints: {problem}\n"
                             f"--- shown:\n{shown}--- real output (paste it, then cut with `...`):\n{real}")
