"""The README and the documentation: short front page, links that resolve, examples that run.

Sphinx builds ``docs/`` with warnings as errors in CI (`.ci/run`), which also catches broken
cross-references between the pages. Here: the README's size and links, the relative links
of every page, every ``distrib`` command line of their ``bash`` blocks (its subcommand and
option names, with ``--help``: the heavy ones, full-MNIST fits and benchmarks, are run for
real by the slow suite and the benchmark scripts), and every ``python`` block, run as it is
(slow: the examples start clusters).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """GitHub's (and MyST's) anchors of a Markdown page's headings."""
    slugs = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def _blocks(language: str) -> list[tuple[str, str]]:
    return [
        (f"{page.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}", m.group(2))
        for page in PAGES
        for text in [page.read_text()]
        for m in _BLOCK.finditer(text)
        if m.group(1) == language
    ]


def test_the_readme_is_a_front_page() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    assert 'python -m pytest -m "not slow"' in "\n".join(lines), "the README's test command"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not fetched here (no internet in CI)
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists() or (
            anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)
        ):
            broken.append(target)
    assert not broken, f"{page.name} links to what is not there: {broken}"


def _distrib_lines() -> list[tuple[str, list[str]]]:
    commands = []
    for where, block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            words = shlex.split(line) if line else []
            while words and "=" in words[0]:  # VAR=value distrib ...
                words.pop(0)
            if words[:1] == ["distrib"]:
                commands.append((where, words[1:]))
    return commands


@pytest.mark.parametrize(("where", "args"), _distrib_lines(), ids=lambda x: str(x)[:60])
def test_every_documented_command_line_parses(where: str, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "distrib", *args, "--help"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, f"{where}: distrib {' '.join(args)}\n{proc.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), _blocks("python"), ids=lambda x: str(x)[:40])
def test_every_python_example_runs(where: str, code: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, f"{where}\n{code}\n{proc.stderr[-3000:]}"
