"""The persisted GUID list file and its run-time replacement."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.engine.ports import ScopeView
from gateway.guids import GuidFileError, GuidMeta, GuidRegistry, GuidSet, import_guids

WHEN = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)


def _meta(name: str = "LG-MP102B.xlsx") -> GuidMeta:
    return GuidMeta(name, "ab" * 32, WHEN)


def test_set_answers_membership_for_ints_only() -> None:
    guids = GuidSet.from_iterable([5, 3, 3, 2**64 - 1, 0])
    assert len(guids) == 4
    assert list(guids) == [0, 3, 5, 2**64 - 1]
    assert 3 in guids and 0 in guids and 2**64 - 1 in guids
    assert 4 not in guids and -1 not in guids and 2**64 not in guids
    assert "3" not in guids and 3.0 not in guids
    view: ScopeView = guids
    assert 5 in view


def test_save_and_load_round_trip_keeps_euis_and_provenance(tmp_path: Path) -> None:
    guids = GuidSet.from_iterable(range(1_000, 50_000, 7))
    path = tmp_path / "guids.bin"
    guids.save(path, _meta("Liste für MP102B.xlsx"))
    loaded = GuidSet.load(path)
    assert loaded == guids
    assert loaded.meta == GuidMeta("Liste für MP102B.xlsx", "ab" * 32, WHEN)
    assert path.stat().st_size % 8 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["guids.bin"]  # no temp file left behind


def test_import_then_save_records_the_source_digest(tmp_path: Path) -> None:
    src = tmp_path / "l.txt"
    src.write_text("00-DB-12-34-56-78-90-A0\n")
    guids, report = import_guids(src)
    guids.save(tmp_path / "g.bin", GuidMeta(src.name, report.source_sha256, WHEN))
    loaded = GuidSet.load(tmp_path / "g.bin")
    assert loaded.meta is not None and loaded.meta.source_sha256 == report.source_sha256
    assert 0x00DB1234567890A0 in loaded


def test_empty_set_round_trips(tmp_path: Path) -> None:
    GuidSet.from_iterable([]).save(tmp_path / "e.bin", _meta())
    assert len(GuidSet.load(tmp_path / "e.bin")) == 0


def test_saving_needs_provenance(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="provenance"):
        GuidSet.from_iterable([1]).save(tmp_path / "x.bin")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:8] + b"\x09\x00" + b[10:], "version 9"),
        (lambda b: b[:-8], "size mismatch"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "digest mismatch"),
        (lambda b: b[:20], "too short"),
    ],
)
def test_damaged_files_are_refused_with_a_named_error(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "g.bin"
    GuidSet.from_iterable([1, 2, 3]).save(path, _meta())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(GuidFileError, match=message) as info:
        GuidSet.load(path)
    assert info.value.code == "guid_file"


def test_unsorted_payload_is_refused_even_with_a_matching_digest(tmp_path: Path) -> None:
    import hashlib
    import struct
    from array import array

    good = GuidSet.from_iterable([1, 2, 3]).to_bytes(_meta())
    body = array("Q", [3, 1, 2]).tobytes()
    head = bytearray(good[: len(good) - len(body)])
    head[64:96] = hashlib.sha256(body).digest()
    assert struct.unpack_from("<Q", head, 16)[0] == 3
    with pytest.raises(GuidFileError, match="not strictly increasing"):
        GuidSet.from_bytes(bytes(head) + body)


def test_failed_save_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "g.bin"
    GuidSet.from_iterable([1, 2]).save(path, _meta())
    before = path.read_bytes()
    with pytest.raises(ValueError):
        GuidSet.from_iterable([3]).save(path, GuidMeta("x", "ab" * 32, datetime(2026, 1, 1)))  # naive time
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["g.bin"]


def test_registry_swaps_lists_and_keeps_the_old_one_on_a_bad_file(tmp_path: Path) -> None:
    reg = GuidRegistry(GuidSet.from_iterable([1, 2]))
    assert 1 in reg and len(reg) == 2 and reg.generation == 0
    GuidSet.from_iterable([7, 8, 9]).save(tmp_path / "new.bin", _meta())
    new = reg.load_file(tmp_path / "new.bin")
    assert list(new) == [7, 8, 9]
    assert reg.current is new
    assert 1 not in reg and 8 in reg and len(reg) == 3 and reg.generation == 1
    (tmp_path / "bad.bin").write_bytes(b"garbage")
    with pytest.raises(GuidFileError):
        reg.load_file(tmp_path / "bad.bin")
    assert 8 in reg and reg.generation == 1


def test_reader_never_sees_a_partial_list_during_swaps() -> None:
    # two lists with no common member: every answer a reader gets must be wholly from one of them
    evens = GuidSet.from_iterable(range(0, 40_000, 2))
    odds = GuidSet.from_iterable(range(1, 40_001, 2))
    reg = GuidRegistry(evens)
    stop = threading.Event()
    bad: list[str] = []
    seen = {"evens": 0, "odds": 0}

    def reader() -> None:
        while not stop.is_set():
            current = reg.current
            n = len(current)
            hits_even = sum(1 for v in (0, 10, 39_998) if v in current)
            hits_odd = sum(1 for v in (1, 11, 39_999) if v in current)
            if n != 20_000 or (hits_even, hits_odd) not in ((3, 0), (0, 3)):
                bad.append(f"len={n} even={hits_even} odd={hits_odd}")
            seen["evens" if hits_even else "odds"] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(400):
            reg.replace(odds if i % 2 == 0 else evens)
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert reg.generation == 400
    assert seen["evens"] + seen["odds"] > 0
