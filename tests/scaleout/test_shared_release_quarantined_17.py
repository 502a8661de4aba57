"""On shared state, an operator's release of a quarantined unsigned copy is known to every instance.

With ``quarantine_unverified_inline`` an inline message whose own XML signature failed is kept as suppressed
(``quarantined-unverified``) under ``<identity>#unverified:<digest of its bytes>``; ``duisgw audit release`` of that
id forwards its bytes to the DNO. On a single node the engine takes the release in (``Engine.released_by_operator``,
docs/ENGINE.md §8): the key is marked ``operator-release`` and the same bytes signed later are its duplicate; a
released AD1 is kept as a released outage for its restorations.

On shared state none of it happened: the take-in (:meth:`SharedEngine.take_in_operator_releases`) marked only a
suppressed AD1's ``s:<id>`` record (a quarantine keeps none), and the transaction's duplicate rule for the bytes'
other id (:meth:`RedisState._same_bytes_duplicate`) accepted only a forward. So the signed copy, delivered again to
any instance, was decided afresh: forwarded a second time to the DNO under its plain id, or suppressed while the DNO
had the outage — and the restoration of that outage paired with it and withheld.

The real :class:`SharedEngine` (two instances, each with its own SQLite store) on a real redis-server, compared with
the single-node :class:`Engine` fed the same story.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from engine_support import (
    CH,
    ESME,
    MPAN,
    MemoryInventory,
    MemoryScope,
    other,
    outage,
    request,
    response,
    restored,
    t,
)

from gateway.engine import Decision, Duplicate, Effect, Engine, EngineConfig
from gateway.engine.effects import Action, Reason
from gateway.engine.events import MessageEvent, unsigned_id
from gateway.engine.state import RELEASED_NOTE
from gateway.store.redis_state import RedisStateConfig
from gateway.store.shared import SharedEngine
from gateway.store.shared_audit import SharedAudit
from gateway.store.sqlite import SqliteStore

pytestmark = pytest.mark.slow

D1 = 0x0123456789ABCDEF01234567
ROWS = [(ESME, CH, MPAN, "Landis+Gyr")]
QUARANTINE: dict[str, Any] = {"quarantine_unverified_inline": True}


def signed(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    return dataclasses.replace(ev, digest=digest)


def unsigned(ev: MessageEvent, digest: int = D1) -> MessageEvent:
    """``ev``'s bytes as the pipeline gives them when their XML signature does not verify."""
    return dataclasses.replace(
        ev, message_id=unsigned_id(ev.message_id, digest), verified=False,
        verification="xml-signature-unverifiable:revocation_list_stale", digest=digest,
    )  # fmt: skip


def later(ev: MessageEvent, minutes: float) -> MessageEvent:
    return dataclasses.replace(ev, arrival=ev.arrival + timedelta(minutes=minutes))


Factory = Callable[[str], SharedEngine]


@pytest.fixture
def instance(tmp_path: Path, redis_url: str) -> Iterator[Factory]:
    made: list[SharedEngine] = []

    def make(name: str) -> SharedEngine:
        eng = SharedEngine(SqliteStore(tmp_path / f"{name}.sqlite3"), RedisStateConfig(url=redis_url, instance=name),
                           EngineConfig(**QUARANTINE), MemoryScope([ESME]), MemoryInventory(ROWS))  # fmt: skip
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()


def submit(eng: SharedEngine, ev: MessageEvent, raw: bytes) -> list[Effect]:
    route = {ev.message_id: ("dno-a", "DCCAlertMessage.AD1")} if ev.lane == "inline" else {}
    return eng.submit_many([(ev, raw)], route)[0]


def decisions(effects: list[Effect]) -> list[Decision]:
    return [e for e in effects if isinstance(e, Decision)]


def the_duplicate(effects: list[Effect]) -> Duplicate:
    assert not decisions(effects), f"decided again: {decisions(effects)}"
    [dup] = [e for e in effects if isinstance(e, Duplicate)]
    return dup


def single_node() -> Engine:
    return Engine(EngineConfig(**QUARANTINE), MemoryScope([ESME]), MemoryInventory(ROWS))


def quarantine(eng: SharedEngine, ev: MessageEvent, raw: bytes) -> str:
    copy = unsigned(ev, ev.digest if ev.digest is not None else D1)
    [d] = decisions(submit(eng, copy, raw))
    assert (d.message_id, d.action, d.reason) == (copy.message_id, Action.SUPPRESS, Reason.QUARANTINED)
    return copy.message_id


def operator_release(eng: SharedEngine, mid: str, at: datetime) -> None:
    """``duisgw audit release``'s local record of it (the CLI's own store connection)."""
    assert eng.store.release_suppressed(mid, "alice", "field visit: a genuine outage", at) is not None


def shared_key(redis_url: str, mid: str) -> dict[str, Any]:
    raw = redis.Redis.from_url(redis_url).get(f"duisgw:seen:{mid}")
    assert raw is not None
    data: dict[str, Any] = json.loads(raw)
    return data


# ------------------------------------------------------------------ taken in, then the signed copy on another instance


def test_an_inline_message_released_from_quarantine_on_one_instance_is_a_duplicate_of_it_on_another(
    instance: Factory, redis_url: str
) -> None:
    """A quarantines the unsigned copy of an 8F0A alert, an operator releases it on A, A takes it in; the DCC
    delivers the same bytes again, now verified, to B: the duplicate of the release (was: forwarded again under the
    plain id — the DNO got the bytes twice)."""
    a, b = instance("gw-a"), instance("gw-b")
    msg = signed(other(1, mid="oth-q"))
    copy = quarantine(a, msg, b"<8F0A>")
    operator_release(a, copy, t(3))
    assert a.take_in_operator_releases() == [(copy, "other-inline")]
    key = shared_key(redis_url, copy)
    assert key["note"] == RELEASED_NOTE  # the shared key says so, for every instance
    assert key["decision"]["reason"] == "quarantined-unverified" and key["by"] == "gw-a"  # decided by A, as it was

    dup = the_duplicate(submit(b, later(msg, 5), b"<8F0A>"))
    assert dup.message_id == "oth-q"
    assert dup.original is not None and dup.original.message_id == copy


def test_an_ad1_released_from_quarantine_is_a_duplicate_and_its_restoration_is_forwarded_as_on_a_single_node(
    instance: Factory,
) -> None:
    """A reboot's AD1 is suppressed (activation window); a genuine cut on the hub minutes later comes unsigned and is
    quarantined; an operator releases it on A (the DNO has that outage). On B: the signed copy is the duplicate of the
    release (was: suppressed afresh, contradicting the release), and the cut's restoration is forwarded
    ``not-paired`` (was: paired with the reboot's AD1 and withheld while the DNO had the outage open)."""
    reboot = [request(0), response(0.5), signed(outage(2, mid="ad1-reboot"), 0x1)]
    cut = signed(outage(20, mid="ad1-cut"))
    rst = restored(20, arrival=40, mid="rst-cut")

    single = single_node()
    for ev in reboot:
        single.handle(ev)
    [q] = decisions(single.handle(unsigned(cut)))
    single.released_by_operator(q.message_id)
    assert not decisions(single.handle(later(cut, 5)))
    expected = [(d.action, d.reason) for d in decisions(single.handle(rst))]
    assert expected == [(Action.FORWARD, Reason.NOT_PAIRED)]

    a, b = instance("gw-a"), instance("gw-b")
    for ev in reboot:
        submit(a, ev, b"<" + ev.message_id.encode() + b">")
    copy = quarantine(a, cut, b"<ad1-cut>")
    operator_release(a, copy, t(25))
    assert a.take_in_operator_releases() == [(copy, "power-outage")]
    dup = the_duplicate(submit(b, later(cut, 5), b"<ad1-cut>"))
    assert dup.original is not None and dup.original.message_id == copy
    got = decisions(submit(b, rst, b"<rst>"))
    assert [(d.action, d.reason) for d in got] == expected
    assert [(e.role, e.message_id) for e in got[0].evidence] == [("released-outage", copy)]


def test_releasing_the_quarantined_copy_after_its_signed_copy_was_suppressed_releases_that_outage_on_every_instance(
    instance: Factory,
) -> None:
    """The signed copy came first after the quarantine (suppressed by B on verified evidence), then the operator
    released the quarantined copy on A: the DNO has the outage, so its restoration, decided by B, is forwarded (was:
    paired with the signed copy and withheld)."""
    a, b = instance("gw-a"), instance("gw-b")
    for ev in [request(0), response(0.5), signed(outage(2, mid="ad1-reboot"), 0x1)]:
        submit(a, ev, b"<" + ev.message_id.encode() + b">")
    cut = signed(outage(20, mid="ad1-s"))
    copy = quarantine(a, cut, b"<ad1-s>")
    [d] = decisions(submit(b, later(cut, 5), b"<ad1-s>"))
    assert d.action is Action.SUPPRESS
    operator_release(a, copy, t(30))
    a.take_in_operator_releases()
    [d] = decisions(submit(b, restored(20, arrival=40, mid="rst-s"), b"<rst>"))
    assert (d.action, d.reason) == (Action.FORWARD, Reason.NOT_PAIRED)


# ------------------------------------------------------------------ released, not taken in yet


def test_the_signed_copy_decided_while_the_release_is_not_taken_in_is_its_duplicate(
    instance: Factory, redis_url: str
) -> None:
    """``duisgw audit release`` takes the shared marker of the quarantined copy's life before it records anything;
    A has not taken the release in when B decides the signed copy: the duplicate of the release (the marker says
    the DNO has the bytes), not forwarded a second time."""
    a, b = instance("gw-a"), instance("gw-b")
    msg = signed(other(1, mid="oth-r"))
    copy = quarantine(a, msg, b"<8F0A>")
    life = datetime.fromisoformat(shared_key(redis_url, copy)["decision"]["decided_at"])
    audit = SharedAudit(redis_url, "duisgw:")
    try:
        assert audit.claim(copy, json.dumps({"operator": "alice", "instance": "gw-a"}), life) is None
    finally:
        audit.close()
    operator_release(a, copy, t(3))  # recorded on A, not taken in yet
    dup = the_duplicate(submit(b, later(msg, 5), b"<8F0A>"))
    assert dup.original is not None and dup.original.message_id == copy
    assert a.take_in_operator_releases() == [(copy, "other-inline")]  # and taken in later, as ever
    dup = the_duplicate(submit(b, later(msg, 6), b"<8F0A>"))
    assert dup.original is not None and dup.original.message_id == copy


def test_a_quarantined_copy_not_released_still_leaves_its_signed_copy_to_be_decided_afresh(instance: Factory) -> None:
    # unchanged, as on a single node: the quarantine withheld the bytes from the DNO
    a, b = instance("gw-a"), instance("gw-b")
    msg = signed(other(1, mid="oth-n"))
    quarantine(a, msg, b"<8F0A>")
    [d] = decisions(submit(b, later(msg, 5), b"<8F0A>"))
    assert (d.message_id, d.action, d.reason) == ("oth-n", Action.FORWARD, Reason.OTHER_INLINE)


# ------------------------------------------------------------------ duisgw audit release of the quarantined copy


@pytest.fixture
def configured(tmp_path: Path, redis_server: Any) -> Iterator[tuple[Path, SharedEngine, SharedEngine]]:
    """``gw-a``'s gateway configuration (shared state) and the real SharedEngines of ``gw-a`` (on that
    configuration's decision store) and ``gw-b``, quarantine configured."""
    from e2ekit import DNO_USER, write_config
    from redisfixture import free_port

    from gateway.testkit.scenario import World

    redis_server.flush()
    reference = World.generated("quarantined-17").write_reference(tmp_path / "reference")
    made: list[SharedEngine] = []
    cfg: Path | None = None
    try:
        for name in ("gw-a", "gw-b"):
            folder = tmp_path / name
            folder.mkdir()
            path = write_config(folder / "gateway.toml", port=free_port(), admin_port=free_port(), reference=reference,
                                destinations=[{"name": "dno-a", "user": DNO_USER, "url": "http://127.0.0.1:9/"}])  # fmt: skip
            path.write_text(path.read_text(encoding="utf-8") + f'\n[state]\nbackend = "redis"\nredis_url = '
                            f'"{redis_server.url}"\ninstance = "{name}"\n', encoding="utf-8")  # fmt: skip
            cfg = cfg or path
            (folder / "state").mkdir()
            made.append(SharedEngine(SqliteStore(folder / "state" / "engine.sqlite3"),
                                     RedisStateConfig(url=redis_server.url, instance=name), EngineConfig(**QUARANTINE),
                                     MemoryScope([ESME]), MemoryInventory(ROWS)))  # fmt: skip
        assert cfg is not None
        yield cfg, made[0], made[1]
    finally:
        for eng in made:
            eng.close()


def test_audit_release_refuses_a_quarantined_copy_whose_signed_copy_another_instance_forwarded(
    configured: tuple[Path, SharedEngine, SharedEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    """A quarantined the unsigned copy; the DCC delivered the same bytes again, verified, to B, which forwarded them
    (the quarantine is no duplicate of it). ``duisgw audit release`` of the quarantined copy on A's configuration is
    refused, naming B's forward (was: released — the DNO got the bytes a second time); A's own store knows nothing
    of B's decision, only the shared key does."""
    from gateway.cli import main

    cfg, a, b = configured
    msg = signed(other(1, mid="oth-cli"))
    copy = quarantine(a, msg, b"<8F0A>")
    [d] = decisions(submit(b, later(msg, 2), b"<8F0A>"))
    assert d.action is Action.FORWARD
    rc = main(["audit", "release", copy, "--config", str(cfg), "--operator", "alice", "--note", "field visit"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "oth-cli" in err and "gw-b" in err and "forward" in err and "the DNO has them" in err
    assert a.store.status(copy) == "suppress"  # not released


def test_audit_release_of_a_quarantined_copy_goes_ahead_when_no_instance_took_its_signed_copy(
    configured: tuple[Path, SharedEngine, SharedEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    """Released through the CLI (the shared marker of its life, then A's record), taken in by A: the signed copy
    delivered to B is its duplicate."""
    from gateway.cli import main

    cfg, a, b = configured
    msg = signed(other(1, mid="oth-cli2"))
    copy = quarantine(a, msg, b"<8F0A>")
    # other bytes naming the identity, unsigned too, quarantined by B: another message, no obstacle
    quarantine(b, signed(later(msg, 2), 0x77), b"<other bytes>")
    rc = main(["audit", "release", copy, "--config", str(cfg), "--operator", "alice", "--note", "field visit"])
    assert rc == 0, capsys.readouterr().err
    assert a.store.status(copy) == "forward"
    assert a.take_in_operator_releases() == [(copy, "other-inline")]
    dup = the_duplicate(submit(b, later(msg, 5), b"<8F0A>"))
    assert dup.original is not None and dup.original.message_id == copy
