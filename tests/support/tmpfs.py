"""A real small file system to fill: a tmpfs mounted for one test (root only)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mount_tmpfs(path: Path, size: str) -> bool:
    """Make `path` and mount a tmpfs of `size` on it; False where mounting is not allowed."""
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0
