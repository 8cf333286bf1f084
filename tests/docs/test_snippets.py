"""The documentation runs as written.

- Every ```python block of README.md and docs/**/*.md is executed, each in a fresh namespace
  and a temporary working directory. A block opts out only with a marker on the line right
  before its fence (blank lines allowed in between), giving the reason:

      <!-- snippet: skip (needs a CSV of images on disk) -->

  Keep those for blocks that need data, weights or hours; a skipped block still has its
  imports checked.
- Every relative link points to an existing file.
- Every ``from hardneg… import …`` / ``import hardneg…`` line and every ``python -m hardneg…``
  module written anywhere in those files (bash blocks, skipped blocks and prose included)
  resolves, and so does every dotted name in backticks (`` `hardneg.samplers.BNSConfig` ``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^\s*```\s*([\w+-]*)\s*$")
SKIP = re.compile(r"^\s*<!--\s*snippet:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")
MARKER = re.compile(r"<!--\s*snippet:")
FROM_IMPORT = re.compile(r"^\s*from\s+(hardneg(?:\.\w+)*)\s+import\s+(.+)$")
IMPORT = re.compile(r"^\s*import\s+(hardneg(?:\.\w+)*(?:\s*,\s*hardneg(?:\.\w+)*)*)")
RUN_MODULE = re.compile(r"-m\s+(hardneg(?:\.\w+)*)")
DOTTED = re.compile(r"`(hardneg(?:\.\w+)+)`")

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with the skip marker that precedes it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            i += 1
        if i >= len(lines):
            raise AssertionError(f"{path}:{start + 1}: unclosed code fence")
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = SKIP.match(lines[before]) if before >= 0 else None
        code = textwrap.dedent("\n".join(lines[start + 1 : i]))
        lang = opening.group(1).lower()
        blocks.append(Block(path, start + 1, lang, code, marker["reason"] if marker else None))
        i += 1
    return blocks


def python_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in fenced_blocks(path) if b.lang in ("python", "py")]


def snippet_params() -> list:
    params = []
    for block in python_blocks():
        marks = [pytest.mark.skip(reason=f"snippet: skip ({block.skip})")] if block.skip else []
        params.append(pytest.param(block, id=block.name, marks=marks))
    return params


def test_the_docs_have_python_blocks():
    blocks = python_blocks()
    assert any(b.path.name == "README.md" and not b.skip for b in blocks)
    assert sum(1 for b in blocks if not b.skip) >= 5  # README 2, training.md 2, data.md 1


def test_skip_markers_are_well_formed_and_attached():
    """A marker names its reason and sits right before a python block (else it is a typo)."""
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        attached = {b.line for b in fenced_blocks(path) if b.skip and b.lang == "python"}
        for number, line in enumerate(lines, 1):
            if not MARKER.search(line):
                continue
            assert SKIP.match(line), f"{path.name}:{number}: write <!-- snippet: skip (reason) -->"
            following = next(
                (n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None
            )
            assert following in attached, f"{path.name}:{number}: marker not before a python block"


@pytest.mark.parametrize("block", snippet_params())
def test_snippet_runs(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"__name__": "__snippet__"}
    exec(compile(block.code, block.name, "exec"), namespace)


def imported_names(path: Path) -> list[tuple[str, str, str | None]]:
    """(where, module, name or None) of every hardneg import line in a file, anywhere."""
    found = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        where = f"{path.relative_to(ROOT).as_posix()}:{number}"
        line = line.split("#", 1)[0]
        if match := FROM_IMPORT.match(line):
            module, names = match.group(1), match.group(2).strip()
            if names.startswith("(") and ")" not in names:
                tail = number
                while ")" not in names:
                    names += " " + lines[tail].split("#", 1)[0]
                    tail += 1
            for name in names.strip("() ").split(","):
                name = name.strip().split(" as ")[0].strip()
                if name:
                    found.append((where, module, name))
        elif match := IMPORT.match(line):
            for module in match.group(1).split(","):
                found.append((where, module.strip(), None))
        for module in RUN_MODULE.findall(line):
            found.append((where, module, None))
    return found


def test_every_hardneg_import_in_the_docs_resolves():
    imports = [item for path in DOC_FILES for item in imported_names(path)]
    assert imports
    broken = []
    for where, module, name in imports:
        try:
            if name is None:
                if importlib.util.find_spec(module) is None:
                    broken.append(f"{where}: no module {module}")
                continue
            if not hasattr(importlib.import_module(module), name):
                broken.append(f"{where}: from {module} import {name}")
        except ImportError as err:
            broken.append(f"{where}: {module}: {err}")
    assert not broken, "\n".join(broken)


def resolve(dotted: str) -> bool:
    """True if ``a.b.C.attr`` is a module, or attributes reached from its longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_dotted_hardneg_name_in_the_docs_resolves():
    broken = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for dotted in DOTTED.findall(line):
                if not resolve(dotted):
                    broken.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {dotted}")
    assert not broken, "\n".join(broken)


LINK = re.compile(r"\]\((?P<target>[^)#\s]*)(?:#[^)\s]*)?\)")


def test_every_relative_link_in_the_docs_exists():
    broken = []
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # an anchor in the same page, or http(s):, mailto:, …
                if not (path.parent / target).exists():
                    broken.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {target}")
    assert not broken, "\n".join(broken)
