"""Fake installed distributions: a module plus a ``*.dist-info`` with entry points, on sys.path.

importlib.metadata finds them exactly as it finds pip-installed plugins.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path


def install_fake_distribution(
    root: Path, dist: str, version: str, entry_point: str, module: str, source: str
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[psyche]\n{entry_point} = {module}\n")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
