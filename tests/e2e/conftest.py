"""Fixtures for the end-to-end tests: signed traffic (built once), free ports, the DNO receiver,
TLS material and a real mosquitto broker (helpers shared with tests/service/servicekit.py)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from e2ekit import Traffic, build_traffic
from servicekit import MOSQUITTO, Broker, Pki, Receiver, free_port, make_pki

__all__ = ["Broker", "Pki", "Receiver", "free_port"]


@pytest.fixture(scope="session")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    return build_traffic(tmp_path_factory.mktemp("traffic"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists() or shutil.which(MOSQUITTO) is None:
        pytest.skip(f"{MOSQUITTO} is not installed: the MQTT e2e test needs a real broker")
    port = free_port()
    data = tmp_path / "mosquitto"
    data.mkdir()
    conf = data / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n")
    b = Broker(port, conf)
    b.start()
    yield b
    b.stop()
