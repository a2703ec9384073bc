"""Execute the Python code blocks of README.md and docs/*.md so the docs cannot rot.

Blocks of one file run in order in one namespace, inside a temporary working
directory. A block directly preceded by ``<!-- test: skip -->`` is not run (long
trainings); ``<!-- test: file PATH -->`` means the block must equal that file of
the repository (used for the worked plugin example, which other tests install).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(?:<!--\s*test:\s*(?P<directive>[^>]*?)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)```",
                   re.S)


def blocks(path: Path):
    for m in BLOCK.finditer(path.read_text(encoding="utf-8")):
        yield (m.group("directive") or "").strip(), m.group("lang"), m.group("code")


@pytest.mark.parametrize("path", [p for p in DOCS if p.exists()], ids=lambda p: p.name)
def test_doc_code_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc__"}
    ran = 0
    for directive, lang, code in blocks(path):
        if directive.startswith("file "):
            target = ROOT / directive.split(None, 1)[1]
            assert target.read_text(encoding="utf-8") == code, f"{path.name}: block differs from {target}"
            continue
        if lang != "python" or directive == "skip":
            continue
        exec(compile(code, f"{path.name}[block {ran}]", "exec"), namespace)  # noqa: S102
        ran += 1


def test_docs_exist():
    names = {p.name for p in DOCS if p.exists()}
    assert {"README.md", "architecture.md", "plugins.md"} <= names
