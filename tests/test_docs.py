"""The user docs hold together: a short README, links and anchors that resolve, one runnable CLI quickstart.

Reads markdown only (no package imports), so it runs in milliseconds. ``quickstart_commands()`` is the one parser of the
README's CLI quickstart, for tests that run it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 300
QUICKSTART_MARKER = "<!-- quickstart -->"

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files() -> list[Path]:
    """README, CHANGELOG and every page under docs/."""
    files = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.is_file()]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code blanked (links in code are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(_INLINE_CODE.sub("", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup reduced to its text, lowercased, punctuation other than ``-`` and
    ``_`` dropped, spaces as ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, duplicates numbered as GitHub does (``x``, ``x-1``, ...)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """Relative link and image targets of a markdown file (web and mail links left out)."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for m in _LINK.finditer(line):
            target = m.group("target").strip("<>")
            if re.match(r"^(https?:|mailto:)", target, re.IGNORECASE):
                continue
            targets.append(target)
    return targets


def quickstart_commands(readme: Path = README) -> list[str]:
    """The command lines of the ```bash block right after the README's quickstart marker: blank lines and ``#``
    comments skipped, backslash-continued lines joined."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == QUICKSTART_MARKER]
    if len(starts) != 1:
        raise ValueError(f"README.md has {len(starts)} {QUICKSTART_MARKER} markers; expected exactly one")
    i = starts[0] + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].strip() != "```bash":
        raise ValueError(f"{QUICKSTART_MARKER} is not followed by a ```bash block")
    commands, pending = [], ""
    for line in lines[i + 1 :]:
        if line.strip().startswith("```"):
            break
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        commands.append(pending + stripped)
        pending = ""
    else:
        raise ValueError("the quickstart ```bash block is not closed")
    if pending:
        commands.append(pending.strip())
    return commands


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it at most {MAX_README_LINES} (move detail to docs/)"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / file_part).resolve()
        if not dest.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(broken)


def test_docs_link_each_other():
    """Every docs page is reachable from the README."""
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if t.partition("#")[0]}
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md: {orphans}"


def test_quickstart_block():
    commands = quickstart_commands()
    assert commands, "the quickstart block has no commands"
    assert all(not c.startswith("$ ") for c in commands), "write commands without a $ prompt"
    assert any(c.startswith("whisper-lora ") for c in commands)


def test_results_markers():
    text = README.read_text(encoding="utf-8")
    assert text.count("<!-- results -->") == 1 and text.count("<!-- /results -->") == 1
    assert text.index("<!-- results -->") < text.index("<!-- /results -->")


def test_slug_rules():
    assert (
        slug("Long-form transcription, timestamps and subtitles") == "long-form-transcription-timestamps-and-subtitles"
    )
    assert slug("On a GPU (H100)") == "on-a-gpu-h100"
    assert slug("The CLI's defaults") == "the-clis-defaults"
    assert slug("`train` flags") == "train-flags"
