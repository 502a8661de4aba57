"""The scripts in ``tools/`` read their options as options: ``--help`` is help, not a folder name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_make_corpus_help_prints_usage_and_creates_no_folder_named_help(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "fuzz" / "make_corpus.py"), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # it took sys.argv[1] as the output folder: wrote ~1,000 seed files into ./--help and exited 0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: make_corpus.py")
    assert list(tmp_path.iterdir()) == []
