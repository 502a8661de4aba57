"""``duisgw audit release`` of an AD1's second life on ONE node (SQLite state, no shared state) does not release a
restoration paired with its FIRST life at the very instant the second life was suppressed.

How it happens: the AD1's first life was held and then released suppressed, so its outage record (kept from the
release) outlives its idempotency key (kept from its arrival); between the two, at one instant of the gateway clock,
the meter's restoration pairs with that first-life record and the DSP re-delivers the AD1, suppressed afresh (a new
life). Both decisions carry that instant. The release matched a pairing to the life by time (decided at or after
the life's suppression): the first life's restoration was released after the second life's AD1, and the DNO got the
end of an outage it never saw. A pairing at the life's instant is the life's only when the store recorded it after
the life's suppression (one node records its decisions in the order it takes them). A restoration paired with the
second life at that same instant, after it, is still released with it.

The real :class:`DurableEngine` on the gateway configuration's own decision store; the release through the CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for extra in (TESTS / "engine", TESTS / "e2e", TESTS / "scaleout"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from e2ekit import DNO_USER, write_config  # noqa: E402
from engine_support import (  # noqa: E402
    CH,
    ESME,
    MPAN,
    MemoryInventory,
    MemoryScope,
    outage,
    request,
    response,
    restored,
    t,
)
from redisfixture import free_port  # noqa: E402

from gateway.cli import main  # noqa: E402
from gateway.engine import Decision, EngineConfig, Event, Tick  # noqa: E402
from gateway.engine.effects import Action, Reason  # noqa: E402
from gateway.service.serve import engine_db_path, load_serve_config  # noqa: E402
from gateway.store.durable import DurableEngine  # noqa: E402
from gateway.store.sqlite import SqliteStore  # noqa: E402
from gateway.testkit.scenario import World  # noqa: E402

AD1 = "ad1-instant-17"
KEEP = EngineConfig().keep_for
PAIRED = (Action.SUPPRESS, Reason.RESTORATION_PAIRED)


class Node:
    def __init__(self, config: Path, engine: DurableEngine) -> None:
        self.config = config
        self.engine = engine

    def decide(self, event: Event, raw: bytes) -> Decision:
        (decision,) = [e for e in self.engine.submit(event, raw) if isinstance(e, Decision)]
        return decision


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A gateway configuration (no shared state) and the engine on its decision store."""
    reference = World.generated("audit-release-instant-17").write_reference(tmp_path / "reference")
    folder = tmp_path / "gw"
    folder.mkdir()
    cfg = write_config(folder / "gateway.toml", port=free_port(), admin_port=free_port(), reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": "http://127.0.0.1:9/"}])  # fmt: skip
    db = engine_db_path(load_serve_config(cfg)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(db)
    try:
        yield Node(cfg, DurableEngine(store, EngineConfig(), MemoryScope([ESME]),
                                      MemoryInventory([(ESME, CH, MPAN, "Landis+Gyr")])))  # fmt: skip
    finally:
        store.close()


def released_lines(capsys: pytest.CaptureFixture[str], node: Node) -> list[str]:
    rc = main(
        ["audit", "release", AD1, "--config", str(node.config), "--operator", "bob", "--note", "second life"]
    )
    got = capsys.readouterr()
    assert rc == 0, got.err
    return got.out.splitlines()


def after(restoration: str) -> str:
    return (f"released {restoration} to dno-a (1 outbox row(s)), the restoration paired with {AD1}, queued after it, "
            "by bob")  # fmt: skip


def test_a_restoration_paired_with_the_first_life_at_the_instant_of_the_second_is_not_released_with_it(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    node.engine.submit(request(0, counter=21), b"<req>")
    assert node.decide(outage(2, mid=AD1), b"<ad1 1>").action is Action.HOLD  # before the response: held
    node.engine.submit(response(1, counter=21, arrival=6), b"<rsp>")  # released suppressed at 6 min
    instant = t(5.5) + KEEP + timedelta(seconds=15)  # past the idempotency key, not the outage record
    node.engine.submit(Tick(instant))
    m = (instant - t(0)).total_seconds() / 60
    node.engine.submit(request(m - 10, counter=22), b"<req 2>")
    node.engine.submit(response(m - 9, counter=22), b"<rsp 2>")
    old = node.decide(restored(2, mid="rst-old", arrival=m), b"<rst old>")
    second = node.decide(outage(m - 3.5, mid=AD1), b"<ad1 2>")
    new = node.decide(restored(m - 3.5, mid="rst-new", arrival=m), b"<rst new>")
    assert (old.action, old.reason) == (new.action, new.reason) == PAIRED
    assert second.action is Action.SUPPRESS
    assert old.decided_at == second.decided_at == new.decided_at == instant

    assert released_lines(capsys, node) == [
        f"released {AD1} to dno-a (1 outbox row(s)) by bob",
        after("rst-new"),
    ]
    assert node.engine.store.status("rst-old") == "suppress"
