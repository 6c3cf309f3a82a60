"""The documentation names only what exists: every path in README.md, docs/*.md and bench/README.md is
in the tree, every relative link reaches a file (and its #anchor a heading), and docs/layout.md names
every package folder of both layers, so the code map cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neutts_assets"
DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
LAYOUT = ROOT / "docs" / "layout.md"

# Where a path-like name is looked for: `pipeline/...` and `defs/...` inside the package, the others
# from the repository root.
PREFIXES = {
    "neutts_assets/": ROOT,
    "neutts_assets_tests/": ROOT,
    "pipeline/": PACKAGE,
    "defs/": PACKAGE,
    "bench/": ROOT,
    "scripts/": ROOT,
    "deploy/": ROOT,
    "docs/": ROOT,
}
PATH = re.compile(r"(?<![\w./$~-])((?:" + "|".join(re.escape(p) for p in PREFIXES) + r")[\w./-]*)")
TEST_FILE = re.compile(r"(?<![\w./-])(test_\w+\.py)\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Named in the docs as made at run time (git-ignored), so not in a fresh clone.
GENERATED = ("bench/.cache",)


def _paths(text: str) -> set[str]:
    found = {m.group(1).rstrip(".,:;") for m in PATH.finditer(text)}
    return {p for p in found if not p.startswith(GENERATED)}


def _resolve(path: str) -> Path:
    prefix = next(p for p in PREFIXES if path.startswith(p))
    return PREFIXES[prefix] / path


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped (but - and _), spaces to hyphens.
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", doc.read_text(), re.M)}


def test_the_docs_exist_and_name_paths():
    assert LAYOUT in DOCS and (ROOT / "docs" / "assets.md") in DOCS
    assert len(_paths(LAYOUT.read_text())) > 40  # the parser sees the layout's listing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc):
    text = doc.read_text()
    missing = sorted(p for p in _paths(text) if not _resolve(p).exists())
    missing += sorted(t for t in set(TEST_FILE.findall(text)) if not (ROOT / "neutts_assets_tests" / t).is_file())
    assert not missing, f"{doc.relative_to(ROOT)} names paths that are not in the tree: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} has broken links: {broken}"


def test_layout_names_every_package_folder_of_both_layers():
    text = LAYOUT.read_text()
    named = {p.rstrip("/") for p in _paths(text)}
    folders = sorted(
        init.parent.relative_to(PACKAGE).as_posix()
        for layer in ("pipeline", "defs")
        for init in (PACKAGE / layer).rglob("__init__.py")
        if init.parent != PACKAGE / layer
    )
    assert folders  # pipeline/inventory, defs/segments, ...
    unnamed = [f for f in folders if f not in named and f"neutts_assets/{f}" not in named]
    assert not unnamed, f"docs/layout.md does not name these package folders: {unnamed}"


def test_the_readme_stays_short_and_keeps_no_code_map():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 130
    assert "scripts/demo.sh" in readme and "scripts/test.sh" in readme and "docs/layout.md" in readme
    assert "## Layout of the code" not in readme
