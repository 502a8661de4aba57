"""Second review of ``duisgw replay --target URL --gateway-config FILE`` (review 14).

Each line of ``duisgw replay`` names what it decides by its ``message_id``. The two ``lost`` lines of one
damaged connection (the request the gap damaged, and the requests after it: ``untrusted``) are made at the
same capture time and got the same id, ``lost:{capture}:{flow}@{time}``: a consumer that keys the lines by
their id (as the conformance harness does) counted one lost line where there were two.

The final decisions of the messages a live gateway held are read from that gateway's own decision store,
"read-only, as `duisgw audit show` does" (docs/CAPTURES.md). The reader opened the store as the gateway
does, read-write (its schema created when missing, a checkpoint thread of its own, and, as the last
connection of a gateway that had stopped, the WAL checkpointed into the database and removed when it
closed): a replay tool wrote into a production decision store.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from gateway.replay_live import store_decisions
from gateway.service.serve import engine_db_path, load_serve_config
from gateway.store.sqlite import SqliteStore
from gateway.testkit.scenario import World

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "tests" / "e2e"))
from e2ekit import DNO_USER, write_config  # noqa: E402

from tests.capture.test_replay_review_14 import Lab, _gap_capture, _replay, lab  # noqa: E402, F401

HELD = "GUID-HELD-1|ad1"


def _gateway(tmp_path: Path) -> tuple[Path, Path]:
    """A gateway configuration and the path of its decision store (not created)."""
    refs = World.generated().write_reference(tmp_path / "refs")
    config = write_config(tmp_path / "gateway.toml", port=1, admin_port=2, reference=refs,
                          destinations=[{"name": "dno-a", "user": DNO_USER, "url": "http://127.0.0.1:9"}])  # fmt: skip
    cfg, _base = load_serve_config(config)
    return config, engine_db_path(cfg)


def _files(db: Path) -> dict[str, bytes | None]:
    """The bytes of the database file and of its WAL (None: no such file)."""
    paths = {s: Path(f"{db}{s}") for s in ("", "-wal")}
    return {s: p.read_bytes() if p.is_file() else None for s, p in paths.items()}


def _record(store: SqliteStore, action: str, at: str) -> None:
    conn = store._db
    assert conn is not None
    record = {"message_id": HELD, "action": action, "reason": "fd-confirmed", "decided_at": at}
    conn.execute(
        "INSERT INTO decisions(message_id, action, reason, decided_at, record) VALUES (?, ?, ?, ?, ?)",
        (HELD, action, "fd-confirmed", at, json.dumps(record)),
    )


def test_the_held_messages_final_decisions_are_read_without_writing_a_stopped_gateways_store(
    tmp_path: Path,
) -> None:
    config, db = _gateway(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    # the files of a gateway that stopped with commits still in its WAL (as after a crash or a kill)
    live = tmp_path / "running" / db.name
    live.parent.mkdir()
    store = SqliteStore(live, checkpoint_interval=0)
    try:
        _record(store, "hold", "2026-03-02T10:30:00Z")
        _record(store, "release-suppress", "2026-03-02T10:36:00Z")
        for suffix in ("", "-wal", "-shm"):
            shutil.copyfile(f"{live}{suffix}", f"{db}{suffix}")
    finally:
        store.close()
    before = _files(db)
    assert before["-wal"]

    found = store_decisions(config)([HELD, "GUID-NEVER-SEEN|ad1"])

    assert found["GUID-NEVER-SEEN|ad1"] is None
    rec = found[HELD]
    assert rec is not None and (rec["action"], rec["decided_at"]) == (
        "release-suppress",
        "2026-03-02T10:36:00Z",
    )
    assert _files(db) == before  # nothing written: no checkpoint into it, its WAL not removed


def test_a_decision_store_without_its_tables_is_read_as_holding_no_record_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    config, db = _gateway(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_bytes(b"")  # created, never written (a gateway that has not started yet)

    assert store_decisions(config)([HELD]) == {HELD: None}
    assert db.read_bytes() == b""


def test_the_lost_lines_of_one_damaged_connection_each_have_an_id_of_their_own(
    lab: Lab,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    rc, lines = _replay(lab, tmp_path, _gap_capture(lab, tmp_path))
    assert rc == 0
    lost = [x for x in lines if x["decision"] == "lost"]
    assert [x["reason"] for x in lost] == ["gap", "untrusted"]
    assert lost[0]["decided_at"] == lost[1]["decided_at"]  # the same capture time
    assert len({x["message_id"] for x in lost}) == 2
    assert all(x["message_id"].startswith("lost:gap.pcapng:10.0.0.2:41001 -> ") for x in lost)
