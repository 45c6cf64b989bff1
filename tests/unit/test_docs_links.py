"""Links between the docs resolve: every relative link's file exists and its anchor is a heading.

Code and docs also point at sections by name (``docs/benchmark.md, "Load sweep"``): a heading
must be that name, or begin with it (``"The shared budget"`` for "The shared budget: one rate
limit for the whole cluster"). Anchors follow GitHub's rule: the heading in lower case, without
punctuation, spaces turned into hyphens, and ``-1``, ``-2`` … after repeats.
"""

from __future__ import annotations

import re
from pathlib import Path

from devstack import REPO_ROOT

SKIP_DIRS = {".git", ".venv", ".venv-batches", ".tools", "build", "dist", "node_modules"}
LINK = re.compile(r"\]\(([^)\s#:]*\.(?:md|png))?(?:#([\w-]+))?\)")
POINTER = re.compile(r'(docs/[\w.]+\.md),? "([^"]+)"')
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _files(*suffixes: str) -> list[Path]:
    return [
        path
        for path in REPO_ROOT.rglob("*")
        if path.suffix in suffixes
        and not SKIP_DIRS & set(path.relative_to(REPO_ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
    ]


def _headings(doc: Path) -> list[str]:
    return re.findall(r"^#+ (.+?)\s*$", FENCE.sub("", doc.read_text()), re.MULTILINE)


def _anchors(doc: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _headings(doc):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        repeat = seen.get(slug, 0)
        seen[slug] = repeat + 1
        anchors.add(f"{slug}-{repeat}" if repeat else slug)
    return anchors


def test_the_anchor_rule_matches_githubs_for_the_headings_used_here(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Benchmarks\n## Load sweep\n```bash\n# not a heading\n```\n"
        "## Redis Sentinel: what a failover can and cannot promise\n## `embed-file` (CLI)\n"
        "## Notes\n## Notes\n"
    )
    assert _anchors(doc) == {
        "benchmarks",
        "load-sweep",
        "redis-sentinel-what-a-failover-can-and-cannot-promise",
        "embed-file-cli",
        "notes",
        "notes-1",
    }


def test_every_relative_link_in_the_docs_reaches_a_file_and_a_heading() -> None:
    broken = []
    for source in _files(".md"):
        for target, anchor in LINK.findall(FENCE.sub("", source.read_text())):
            dest = (source.parent / target).resolve() if target else source
            if not dest.exists():
                broken.append(f"{source.relative_to(REPO_ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{source.relative_to(REPO_ROOT)}: {target}#{anchor}")
    assert broken == []


def test_every_section_named_in_code_or_docs_exists() -> None:
    broken = []
    for source in _files(".md", ".py", ".yml", ".toml"):
        for doc, section in POINTER.findall(source.read_text(errors="replace")):
            if not any(h.startswith(section) for h in _headings(REPO_ROOT / doc)):
                broken.append(f"{source.relative_to(REPO_ROOT)}: {doc}, {section!r}")
    assert broken == []
