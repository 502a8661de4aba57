"""Fixtures for the service tests (helpers live in ``servicekit``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from servicekit import MOSQUITTO, Broker, Pki, Receiver, free_port, make_pki

from gateway.service.outbox import RejectStore, SqliteStore

# re-exported: tests/e2e imports these from whichever top-level ``conftest`` pytest loaded first
__all__ = ["Broker", "Pki", "Receiver", "free_port"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker.in_folder(tmp_path, persistence=True)
    yield b
    b.stop()


StartBroker = Callable[..., Broker]


@pytest.fixture
def broker_with(tmp_path: Path) -> Iterator[StartBroker]:
    """Starts a mosquitto on a free loopback port with extra configuration lines (an ACL, a size limit)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip(f"{MOSQUITTO} is not installed (Debian package mosquitto): MQTT tests need a real broker")
    started: list[Broker] = []

    def start(*lines: str) -> Broker:
        data = tmp_path / "mosquitto"
        data.mkdir(exist_ok=True)
        port = free_port()
        conf = data / "mosquitto.conf"
        # "user root": a broker started as root keeps its user and can read the ACL under tmp_path
        # (no effect when not started as root)
        base = [
            f"listener {port} 127.0.0.1",
            "user root",
            "allow_anonymous true",
            "persistence false",
            "log_dest none",
        ]
        conf.write_text("\n".join([*base, *(line.replace("{data}", str(data)) for line in lines)]) + "\n")
        broker = Broker(port, conf)
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
async def rejects(tmp_path: Path) -> AsyncIterator[RejectStore]:
    store = SqliteStore(tmp_path / "gw.sqlite3", synchronous="NORMAL")
    await store.open()
    yield RejectStore(store)
    await store.close()
