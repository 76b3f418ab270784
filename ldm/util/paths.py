"""Where the repository is, so that paths such as ``checkpoints/...`` and ``configs/...`` work
from any working directory."""
from __future__ import annotations

import os

# ldm/util/paths.py -> ldm/util -> ldm -> the repository root (the folder holding ldm/)
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def in_cwd_or_repository(path: str) -> str:
    """``path`` (``~`` expanded) as given when it exists or is absolute; else, when it exists
    there, the same relative path under the repository root, so configs naming
    ``checkpoints/...`` (the shipped models) work from anywhere; else ``path`` unchanged."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repository = os.path.join(REPOSITORY_ROOT, path)
    return in_repository if os.path.exists(in_repository) else path
