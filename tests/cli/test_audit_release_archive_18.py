"""``duisgw audit release`` of a quarantined unverified copy whose same bytes were taken in under their verified id
and have since been moved to an archive file by ``duisgw audit archive``.

The story, on a real gateway's store (the live demo's, copied per test) and the security lab's signed messages,
through the real classifier and ``DurableEngine`` with ``quarantine_unverified_inline``: the DSP delivers an AD1,
its signature verifies and it is forwarded (the DNO gets it). Days later, past the engine's retention, the DSP
delivers the same bytes again while the gateway lacks the DSP's XML-signing certificate (an SMKI reload dropped
it): quarantined under ``<identity>#unverified:<digest>``. The archive job then moves the settled history, the
forwarded AD1 among it. An operator releases the quarantined copy: the live store no longer holds the signed copy,
so the release forwarded the same bytes to the DNO a second time (another ``X-DUISGW-Message-Id``). It is refused,
naming the archive file and row; inside the release's transaction too. An archive file the live store names and
that cannot be read refuses the release (exit 2, nothing released); a copy the archive holds as suppressed (the DNO
never got it, its life over) does not.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from archive_support import audit, query, store_path

from gateway.engine.config import EngineConfig
from gateway.engine.errors import StoreError
from gateway.guids import import_guids
from gateway.inventory import import_inventory_csv
from gateway.pipeline import Classifier
from gateway.replay import InputMessage, ReplayRun
from gateway.smki import CertificateStore
from gateway.store import archive as archive_module
from gateway.store.archive import ArchivedCopy, archive_settled
from gateway.store.durable import DurableEngine
from gateway.store.sqlite import SqliteStore
from tests.security.attacks import ad1, response
from tests.security.lab import Lab

QUARANTINE = EngineConfig(quarantine_unverified_inline=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab.build(tmp_path_factory.mktemp("release-archive-lab"))


@pytest.fixture(scope="module")
def without_the_dsp(lab: Lab) -> Classifier:
    """The lab's classifier after an SMKI reload that dropped the DSP's XML-signing certificate."""
    full = CertificateStore.from_path(lab.refs["certs"])
    dsp = lab.world.dsp.certificate.serial_number
    return lab.classifier(CertificateStore(c for c in full if c.certificate.serial_number != dsp))


class Gateway:
    """The demo's decision store, deciding the lab's messages (replay driver, real classifier and engine)."""

    def __init__(self, db: Path, lab: Lab) -> None:
        guids, _ = import_guids(lab.refs["guids"])
        inventory, _ = import_inventory_csv(lab.refs["inventory"])
        self.store = SqliteStore(db, checkpoint_interval=0)
        self.durable = DurableEngine(self.store, QUARANTINE, guids, inventory)
        self.run = ReplayRun(lab.classifier(), self.durable, QUARANTINE.hold_limit, batch_size=1)

    @property
    def clock(self) -> datetime:
        now = self.durable.engine.clock
        assert now is not None
        return now

    def feed(self, classifier: Classifier, at: datetime, lane: str, body: bytes) -> list[dict[str, object]]:
        self.run.classifier = classifier
        return [*self.run.feed(InputMessage(at, lane, body, "test")), *self.run.flush()]  # type: ignore[arg-type]


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for g in made:
        g.store.close()


def _signed_then_quarantined(
    work: Path, lab: Lab, without_the_dsp: Classifier, gateways: list[Gateway], n: int, *, evidence: bool = False
) -> tuple[str, str, datetime]:
    """The signed copy of AD1 ``n`` decided (forwarded and delivered, or with ``evidence`` suppressed in the
    activation window) and, past the retention, its same bytes quarantined; returns the verified id, the
    quarantined id and a cut-off between the two."""
    gw = Gateway(store_path(work), lab)
    gateways.append(gw)
    at = gw.clock + timedelta(minutes=1)
    body = ad1(lab, n, start=at - timedelta(minutes=3), at=at - timedelta(seconds=20))
    if evidence:
        gw.feed(lab.classifier(), at - timedelta(minutes=2), "observe", response(lab, n, at=at - timedelta(minutes=2)))
    [signed] = gw.feed(lab.classifier(), at, "inline", body)
    assert signed["decision"] == ("suppress" if evidence else "forward"), signed
    identity = str(signed["message_id"])
    if not evidence:
        gw.store.mark_delivered([identity])  # the DNO got it
    later = at + QUARANTINE.keep_for + timedelta(days=1)
    [quarantined] = gw.feed(without_the_dsp, later, "inline", body)
    assert (quarantined["decision"], quarantined["reason"]) == ("suppress", "quarantined-unverified"), quarantined
    alias = str(quarantined["message_id"])
    assert alias.startswith(identity + "#unverified:")
    gw.store.close()
    gateways.remove(gw)
    return identity, alias, at + timedelta(hours=1)


def _archive(work: Path, cut: datetime) -> Path:
    archive = work / "archive.sqlite3"
    report = archive_settled(store_path(work), archive, before=cut, keep_for=QUARANTINE.keep_for, transport_db=None)
    assert report.messages > 0
    return archive


def _released(work: Path, alias: str) -> list[tuple[object, ...]]:
    return query(store_path(work), "SELECT action, reason FROM decisions WHERE message_id = ? ORDER BY seq", (alias,))


def test_the_release_of_a_quarantined_copy_whose_signed_copy_was_archived_is_refused_naming_the_archive(
    work: Path, capsys: pytest.CaptureFixture[str], lab: Lab, without_the_dsp: Classifier, gateways: list[Gateway]
) -> None:
    identity, alias, cut = _signed_then_quarantined(work, lab, without_the_dsp, gateways, 71)
    archive = _archive(work, cut)
    db = store_path(work)
    assert query(db, "SELECT count(*) FROM messages WHERE message_id = ?", (identity,)) == [(0,)]  # moved
    [(seq,)] = query(archive, "SELECT seq FROM messages WHERE message_id = ?", (identity,))
    rc, out, err = audit(capsys, "release", alias, "--config", str(work / "gateway.toml"), "--operator", "alice",
                         "--note", "field visit: genuine outage")  # fmt: skip
    # was: exit 0, "released ... (1 outbox row(s))": the DNO got the same bytes a second time
    assert rc == 1, out + err
    assert "verified id" in err and str(archive.resolve()) in err and f"row {seq}" in err and "forward" in err
    assert out == ""
    assert _released(work, alias) == [("suppress", "quarantined-unverified")]
    assert query(db, "SELECT count(*) FROM outbox WHERE message_id = ?", (alias,)) == [(0,)]


def test_the_stores_release_refuses_it_in_its_transaction_when_the_signed_copy_is_in_the_archive(
    work: Path, lab: Lab, without_the_dsp: Classifier, gateways: list[Gateway]
) -> None:
    # the CLI's check runs before the release's transaction; an archive run moving the signed copy in between
    # (its live delete committed before the release's BEGIN IMMEDIATE) is refused there
    _identity, alias, cut = _signed_then_quarantined(work, lab, without_the_dsp, gateways, 72)
    archive = _archive(work, cut)
    store = SqliteStore(store_path(work), checkpoint_interval=0)
    try:
        with pytest.raises(StoreError, match="moved since to the archive") as refused:
            store.release_suppressed(alias, "alice", "field visit", datetime.now().astimezone())
        assert str(archive.resolve()) in str(refused.value)
        assert store.status(alias) == "suppress" and store.operator_releases() == []
    finally:
        store.close()


def test_an_archive_file_that_cannot_be_read_refuses_the_release_of_a_quarantined_copy(
    work: Path, capsys: pytest.CaptureFixture[str], lab: Lab, without_the_dsp: Classifier, gateways: list[Gateway]
) -> None:
    _identity, alias, cut = _signed_then_quarantined(work, lab, without_the_dsp, gateways, 73)
    archive = _archive(work, cut)
    archive.rename(work / "elsewhere.sqlite3")  # moved away by hand
    rc, out, err = audit(capsys, "release", alias, "--config", str(work / "gateway.toml"), "--operator", "alice",
                         "--note", "field visit")  # fmt: skip
    assert rc == 2 and out == ""
    assert str(archive.resolve()) in err and "not known" in err and "not released" in err
    assert _released(work, alias) == [("suppress", "quarantined-unverified")]


def test_a_quarantined_copy_whose_archived_signed_copy_was_suppressed_is_released_and_says_so(
    work: Path, capsys: pytest.CaptureFixture[str], lab: Lab, without_the_dsp: Classifier, gateways: list[Gateway]
) -> None:
    # the DNO never got these bytes, and the archived suppression cannot be released any more: the quarantined
    # copy is the one way to forward them, once
    identity, alias, cut = _signed_then_quarantined(work, lab, without_the_dsp, gateways, 74, evidence=True)
    archive = _archive(work, cut)
    assert query(archive, "SELECT status FROM messages WHERE message_id = ?", (identity,)) == [("suppress",)]
    rc, out, err = audit(capsys, "release", alias, "--config", str(work / "gateway.toml"), "--operator", "alice",
                         "--note", "field visit")  # fmt: skip
    assert rc == 0, err
    assert out.startswith(f"released {alias} ")
    assert "suppressed under their verified id" in err and str(archive.resolve()) in err
    assert _released(work, alias)[-1] == ("release-forward", "operator-release")


def test_a_quarantined_copy_without_a_signed_copy_anywhere_is_released_with_an_archive_beside(
    work: Path, capsys: pytest.CaptureFixture[str], lab: Lab, without_the_dsp: Classifier, gateways: list[Gateway]
) -> None:
    _identity, alias, cut = _signed_then_quarantined(work, lab, without_the_dsp, gateways, 75)
    archive = _archive(work, cut)
    with contextlib.closing(sqlite3.connect(archive)) as conn, conn:  # (not the same bytes any more)
        conn.execute("UPDATE messages SET raw = x'00' WHERE message_id LIKE ?", (alias.split("#")[0],))
    rc, out, err = audit(capsys, "release", alias, "--config", str(work / "gateway.toml"), "--operator", "alice",
                         "--note", "field visit")  # fmt: skip
    assert rc == 0, err
    assert out.startswith(f"released {alias} ") and "verified id" not in err


def test_an_archive_file_that_becomes_unreadable_after_the_clis_check_is_exit_2_and_nothing_released(
    work: Path,
    capsys: pytest.CaptureFixture[str],
    lab: Lab,
    without_the_dsp: Classifier,
    gateways: list[Gateway],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the CLI's check reads the archive (the signed copy suppressed there: the release goes on); the file is moved
    # away before the release's transaction reads it again: unreadable there, as at the CLI's check (exit 2)
    _identity, alias, cut = _signed_then_quarantined(work, lab, without_the_dsp, gateways, 76, evidence=True)
    archive = _archive(work, cut)
    real = archive_module.archived_copies
    calls: list[int] = []

    def moved_after_the_first_read(files: Sequence[Path], message_id: str, raw: bytes) -> list[ArchivedCopy]:
        calls.append(1)
        found = real(files, message_id, raw)
        if len(calls) == 1:
            archive.rename(work / "elsewhere.sqlite3")  # moved away by hand, just after the CLI's check
        return found

    monkeypatch.setattr(archive_module, "archived_copies", moved_after_the_first_read)
    rc, out, err = audit(capsys, "release", alias, "--config", str(work / "gateway.toml"), "--operator", "alice",
                         "--note", "field visit")  # fmt: skip
    assert len(calls) == 2  # the CLI's check, then the release's transaction
    assert rc == 2 and out == "", err  # was: exit 1 (the refusal of a release the decision state forbids)
    assert str(archive.resolve()) in err and "nothing released" in err
    assert _released(work, alias) == [("suppress", "quarantined-unverified")]
