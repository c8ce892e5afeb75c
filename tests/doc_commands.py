"""Every `nst-ort` command shown in README.md and docs/*.md, found where a reader would copy it from:
indented and fenced code blocks and inline code spans (also after `&&` or `;` in a shell line).

    python tests/doc_commands.py          # lists them, with the file and line

tests/test_docs_commands.py runs each with --dry-run, and each kind of run for real at a small size.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `nst-ort` then an argument; not nst-ort-export, not `nst-ort:` (an output line), not prose.
_COMMAND = re.compile(r"(?:^|&&|;|\|\|)\s*((?:ulimit\s+-\S+\s+\d+\s*;\s*)?nst-ort\s+[^`|&;#]+?(?:;\s*nst-ort[^`|&#]*)?)\s*(?=$|&&|\|\||#)")


@dataclasses.dataclass(frozen=True)
class DocCommand:
    file: str  # relative to the repository
    line: int
    text: str  # the command as written (with a `ulimit ...;` prefix where the docs have one)

    @property
    def argv(self) -> list[str]:
        """The arguments after `nst-ort`, as a shell would split them."""
        words = shlex.split(self.text.split("nst-ort", 1)[1])
        return words

    @property
    def ulimit_v(self) -> int | None:
        m = re.match(r"ulimit\s+-v\s+(\d+)", self.text)
        return int(m.group(1)) * 1024 if m else None

    @property
    def subcommand(self) -> str | None:
        argv = self.argv
        return argv[0] if argv and re.fullmatch(r"[a-z]+", argv[0]) else None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _code_spans(text: str) -> list[tuple[int, str]]:
    """(line number, code) for every code block line and inline code span."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    ") or line.startswith("\t"):
            out.append((n, line.strip()))
            continue
        out += [(n, m.group(1)) for m in re.finditer(r"`([^`]+)`", line)]
    return out


# A recipe shown as flags only (the README's multi-scale lines): run after a stand-in command.
RECIPE_BASE = "nst-ort content.jpg style.jpg -o out.png"
_RECIPE = re.compile(r"^--scales \S+ --scale-iterations \S+$")


def commands(files: list[Path] | None = None) -> list[DocCommand]:
    found = []
    for path in files or DOCS:
        for n, code in _code_spans(path.read_text()):
            code = code.removeprefix("$ ").strip()
            if _RECIPE.match(code):
                found.append(DocCommand(str(path.relative_to(ROOT)), n, f"{RECIPE_BASE} {code}"))
                continue
            for m in _COMMAND.finditer(code):
                text = m.group(1).strip()
                command = text.split(";")[-1].strip() if text.startswith("ulimit") else text
                # Not commands: an output line (`nst-ort check: ...`), a command with its arguments elided.
                if re.match(r"nst-ort\s+\S", command) and not re.match(r"nst-ort\s+[\w-]+:", command) \
                        and " ... " not in f"{command} ":
                    found.append(DocCommand(str(path.relative_to(ROOT)), n, text))
    return found


if __name__ == "__main__":
    for c in commands():
        print(c)
