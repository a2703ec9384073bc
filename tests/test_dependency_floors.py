"""The minimum versions declared in pyproject.toml cover the APIs the code calls."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (distribution, source pattern, the first release that has it)
API_INTRODUCED = [
    ("torch", r"is_autocast_enabled\(\s*[\"a-z]", (2, 4)),        # device_type argument
    ("torch", r"get_autocast_dtype\(", (2, 4)),
    ("torch", r"torch\.nn\.attention\.", (2, 2)),
    ("pillow", r"load_default\(\s*size", (10, 1)),
    ("pillow", r"Image\.Resampling\.", (9, 1)),
]


def _floors() -> dict[str, tuple[int, ...]]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    out = {}
    for name, version in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"', deps):
        out[name.lower()] = tuple(int(p) for p in version.split("."))
    return out


def test_declared_floors_cover_the_apis_used() -> None:
    floors = _floors()
    sources = [p for pkg in ("taming_core", "taming_plugins") for p in (ROOT / pkg).rglob("*.py")]
    text = {p: p.read_text(encoding="utf-8") for p in sources}
    for dist, pattern, introduced in API_INTRODUCED:
        users = [str(p.relative_to(ROOT)) for p, t in text.items() if re.search(pattern, t)]
        if users:
            assert floors[dist] >= introduced, (
                f"{users[0]} uses {pattern!r} (new in {dist} {'.'.join(map(str, introduced))}) "
                f"but pyproject.toml declares {dist}>={'.'.join(map(str, floors[dist]))}")
