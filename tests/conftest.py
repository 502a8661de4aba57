"""Test-wide fixtures.

``shared`` is the reference material beside the project (``../shared``). Tests that need it skip
with a clear reason on a fresh clone without it, and fail instead of skipping when ``CI`` is set
(CI always has it, so a skip there would hide a broken conformance run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DUISGW_SHARED", PROJECT.parent / "shared")).resolve()


def _need_shared() -> Path:
    if not (SHARED / "duis").is_dir():
        reason = f"reference material not found at {SHARED} (set DUISGW_SHARED or place ../shared beside the project)"
        if os.environ.get("CI"):
            pytest.fail("CI run without ../shared: " + reason)
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path to ../shared; skips (or fails under CI) when absent."""
    return _need_shared()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT
