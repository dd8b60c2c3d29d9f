"""The repository's Dockerfile as the tests read it: its instructions per stage.

No Docker engine runs where the tests do: tests/unit/test_dockerfile.py checks what the image
declares against deploy/kubernetes/, and tests/integration/test_dockerfile.py runs the RUN
steps that build and install pgne, with the image's paths moved into a temporary directory.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from support.processes import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str  # FROM's image, ARGs expanded
    name: str | None  # FROM ... AS name
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def one(self, instruction: str) -> str:
        (only,) = self.all(instruction)
        return only


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of every instruction: comments dropped, `\\` continuations joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        name, _, args = whole.partition(" ")
        found.append((name.upper(), re.sub(r"\s+", " ", args.strip())))
    assert not pending, "a continuation at the end of the file"
    return found


def stages(text: str | None = None) -> tuple[dict[str, str], list[Stage]]:
    """({ARG: default} declared before the first FROM, [stages in order])."""
    args: dict[str, str] = {}
    result: list[Stage] = []
    for name, arguments in instructions(DOCKERFILE.read_text(encoding="utf-8") if text is None else text):
        if name == "ARG" and not result:
            key, _, value = arguments.partition("=")
            args[key] = value
        elif name == "FROM":
            image, _, alias = arguments.partition(" AS ")
            for key, value in args.items():
                image = image.replace(f"${{{key}}}", value)
            result.append(Stage(image, alias or None))
        else:
            assert result, f"{name} before the first FROM"
            result[-1].instructions.append((name, arguments))
    return args, result


def exec_form(arguments: str) -> list[str]:
    """ENTRYPOINT/CMD in exec form (a JSON array)."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value
