"""Two gateway instances on one redis-server for the audit CLI's shared-state tests: each a gateway configuration
(``[state] backend = "redis"``, ``[engine] retention`` when given) and the real :class:`SharedEngine` on that
configuration's decision store (``state/engine.sqlite3``), over a one-meter inventory; ``duisgw audit`` run through
the CLI (``main``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from e2ekit import DNO_USER, write_config
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope
from redisfixture import RedisServer, free_port

from gateway.cli import main
from gateway.engine import EngineConfig
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.sqlite import SqliteStore
from gateway.testkit.scenario import World

ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
RELEASE_COLUMNS = ("status", "released_by", "release_note")


@dataclass
class Instance:
    name: str
    config: Path
    engine: SharedEngine


@contextmanager
def two_instances(
    tmp_path: Path, redis_server: RedisServer, seed: str, retention: timedelta | None = None
) -> Iterator[tuple[Instance, Instance]]:
    """``gw-a`` and ``gw-b`` on ``redis_server`` (flushed first), under ``tmp_path``; their engines closed after."""
    redis_server.flush()
    reference = World.generated(seed).write_reference(tmp_path / "reference")
    engine_config = EngineConfig() if retention is None else EngineConfig(retention=retention)
    made: list[Instance] = []
    try:
        for name in ("gw-a", "gw-b"):
            folder = tmp_path / name
            folder.mkdir()
            cfg = write_config(folder / "gateway.toml", port=free_port(), admin_port=free_port(), reference=reference,
                               destinations=[{"name": "dno-a", "user": DNO_USER, "url": "http://127.0.0.1:9/"}])  # fmt: skip
            more = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\ninstance = "{name}"\n'
            if retention is not None:
                more += f'\n[engine]\nretention = "{int(retention.total_seconds())}s"\n'
            cfg.write_text(cfg.read_text(encoding="utf-8") + "\n" + more, encoding="utf-8")
            (folder / "state").mkdir()
            engine = SharedEngine(SqliteStore(folder / "state" / "engine.sqlite3"),
                                  RedisStateConfig(url=redis_server.url, instance=name), engine_config,
                                  MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip
            made.append(Instance(name, cfg, engine))
        yield made[0], made[1]
    finally:
        for inst in made:
            inst.engine.close()


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``duisgw audit ARGS``: its exit status, stdout and stderr."""
    rc = main(["audit", *args])
    got = capsys.readouterr()
    return rc, got.out, got.err
