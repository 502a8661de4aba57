"""Process helpers for tests that start worker processes (read from /proc)."""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> set[int]:
    """The live (not zombie) child processes of ``pid``."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out
