"""The repository stands alone: nothing reads the briefing folder beside a checkout, docstrings cite
the documents under docs/ (by a section that exists) instead of files outside the repository, and
the bundled reference data is present and unmodified."""

from __future__ import annotations

import hashlib
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("omniagent_jax", "tests", "benchmarks", "tools", "configs", "launch")
# Upstream data kept byte for byte; not ours to edit, so not scanned for citations.
EXCLUDED = (REPO / "tests" / "data",)
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".md", ".toml", ".txt", ".json", ".cfg", ".ini"}

# The patterns are written so that this file does not match them itself.
OUTSIDE_READ = re.compile(r"\.\./shared|shared/+reference|shared/+spec|parent\s*/\s*[\"']shared[\"']")
BARE_DOC = re.compile(r"\b(model|protocol|design|training)\.md\b")
DOC_CITATION = re.compile(r"docs/(\w+)\.md`?((?:\s*(?:,|and|–|-|/)?\s*§\s*\d+(?:\.\d+)*)*)")
SECTION_NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")

REFERENCE_SHA256 = {
    "demo_inference.mp4": "e1c69977ce86a078cd63ffedb762842dd80e83444079c70b19ef67f7692211da",
    "example_eval.jsonl": "0e50ac741f7255b46be719eb5de665a25aa20da51269d7447ed71b7d49fb4e96",
    "example_question.json": "996916855ab755cc3f7e6128a59e573f7153a1151e2c24d2901e7c477e7f3e7e",
    "example_train_rl.jsonl": "d780f21b2c7009871eb96d3d870235d3af7fba144a3c7c106128dd929d327e6e",
    "example_train_sft.jsonl": "5e4be2731041a32564c3bc2135ed74912e81688c1e0fceb1c722556ca1be172e",
}


def scanned_files(dirs=SCANNED_DIRS) -> list[pathlib.Path]:
    out = []
    for d in dirs:
        for p in sorted((REPO / d).rglob("*")):
            if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts and not any(
                p.is_relative_to(e) for e in EXCLUDED
            ):
                out.append(p)
    return out


def lines_matching(pattern: re.Pattern[str], text: str, keep=lambda m, line: True) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) for m in pattern.finditer(line) if keep(m, line)]


def doc_sections(name: str) -> set[str]:
    """The numbered headings of `docs/<name>.md` (`## 2.` → "2", `### 2.1` → "2.1")."""
    text = (REPO / "docs" / f"{name}.md").read_text(encoding="utf-8")
    return {m[1] for line in text.splitlines() if (m := HEADING.match(line))}


def bare_citations(text: str) -> list[tuple[int, str]]:
    """Mentions of the four document names not written as a path under docs/."""
    return lines_matching(BARE_DOC, text, keep=lambda m, line: not line[: m.start()].endswith("docs/"))


def broken_citations(text: str) -> list[str]:
    """Citations of a document under docs/ (with sections `§N`) whose document or section does not exist."""
    bad = []
    for m in DOC_CITATION.finditer(text):
        name = m[1]
        if not (REPO / "docs" / f"{name}.md").is_file():
            bad.append(f"docs/{name}.md (no such document)")
            continue
        sections = doc_sections(name)
        bad += [f"docs/{name}.md §{s}" for s in SECTION_NUMBER.findall(m[2]) if s not in sections]
    return bad


def test_the_patterns_catch_what_they_are_for():
    # Built from pieces so that this file never holds what it looks for.
    shared, docs = "shared", "docs/"
    model, proto, train, nowhere = (name + ".md" for name in ("model", "protocol", "training", "nowhere"))
    assert OUTSIDE_READ.search(f'path = "../{shared}/reference/x.jsonl"')
    assert OUTSIDE_READ.search(f'REPO.parent / "{shared}" / "reference"')
    line = f"see {model} §2.1 and {docs}{proto} §3"
    assert bare_citations(line) == [(1, line)]
    assert not bare_citations(f"see {docs}{model} §2.1, {docs}{train} §4")
    text = f"{docs}{model} §2.1, §99; {docs}{proto} §1–§4; {docs}{nowhere} §1"
    assert broken_citations(text) == [f"{docs}{model} §99", f"{docs}{nowhere} (no such document)"]


def test_nothing_reads_outside_the_repository():
    found = [f"{p.relative_to(REPO)}:{n}: {line}"
             for p in scanned_files() for n, line in lines_matching(OUTSIDE_READ, p.read_text(encoding="utf-8"))]
    assert not found, "files refer to the briefing folder outside the repository:\n" + "\n".join(found)


def test_no_citation_of_documents_outside_the_repository():
    found = [f"{p.relative_to(REPO)}:{n}: {line}"
             for p in scanned_files() for n, line in bare_citations(p.read_text(encoding="utf-8"))]
    assert not found, "cite docs/<name>.md (or an upstream source by project and file):\n" + "\n".join(found)


@pytest.mark.parametrize("name", ["architecture", "protocol", "model", "training"])
def test_each_document_has_numbered_sections(name):
    assert {"1", "2"} <= doc_sections(name)


def test_every_cited_section_exists():
    files = scanned_files() + sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
    found = [f"{p.relative_to(REPO)}: {c}" for p in files for c in broken_citations(p.read_text(encoding="utf-8"))]
    assert not found, "citations of missing documents or sections:\n" + "\n".join(found)


def test_reference_data_is_bundled_unmodified():
    ref = REPO / "tests" / "data" / "reference"
    digests = {name: hashlib.sha256((ref / name).read_bytes()).hexdigest() for name in REFERENCE_SHA256}
    assert digests == REFERENCE_SHA256
    assert "Apache" in (ref / "README.md").read_text(encoding="utf-8")


def test_tiny_sft_config_finds_its_train_file_from_the_repository_root():
    from omniagent_jax.train.config import load_config

    cfg = load_config(REPO / "configs" / "sft" / "tiny.yaml")
    assert (REPO / cfg.data.train_file).is_file(), cfg.data.train_file
