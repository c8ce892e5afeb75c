"""Every relative link in README.md and docs/*.md names a file that exists, and its #anchor a heading
of that file (GitHub's anchors: lower case, punctuation dropped, spaces to hyphens). The README's
detail lives in docs/ pages it links to: a page moved or a heading renamed must not leave a dead link."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from doc_commands import DOCS, ROOT

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    out, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def _links() -> list[tuple[str, Path, str]]:
    found = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for target in _LINK.findall(line):
                if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    found.append((f"{doc.relative_to(ROOT)}:{n}", doc, target))
    return found


LINKS = _links()


def test_the_readme_links_its_pages():
    readme = {t for w, _, t in LINKS if w.startswith("README.md:")}
    assert {"docs/usage.md", "docs/providers.md", "docs/performance.md", "docs/web.md", "docs/errors.md"} <= readme


@pytest.mark.parametrize("where,doc,target", LINKS, ids=[w for w, _, _ in LINKS])
def test_link_resolves(where, doc, target):
    file, _, anchor = target.partition("#")
    path = (doc.parent / file).resolve() if file else doc
    assert path.exists(), f"{where}: {target}: no such file"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{where}: {target}: no heading with that anchor ({sorted(anchors(path))})"
