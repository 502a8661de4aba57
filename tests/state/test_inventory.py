"""The ESME <-> Comms Hub <-> MPAN inventory: snapshot import, lookups, learning, reload merge."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.ports import InventoryView
from gateway.inventory import (
    Inventory,
    InventoryImportError,
    InventoryRegistry,
    InventoryRow,
    _IntIndex,
    import_inventory_csv,
    mpan_key,
    mpan_text,
)
from gbcs.eui import format_eui

E1, E2, E3, E4 = 0x00DB1234567890A0, 0x00DB1234567890B0, 0x00DB1234567890C0, 0x00DB1234567890D0
CH1, CH2, CH3 = 0x00DB1234567890A2, 0x00DB1234567890B2, 0x00DB1234567890C2
M1, M2, M3 = "1234567890126", "1234567890135", "0012345678900"


def _csv(tmp_path: Path, text: str, name: str = "inv.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


SNAPSHOT = (
    "ESME ID,Comms Hub,MPAN Core,Make,Model\n"
    f"{format_eui(E1)},{format_eui(CH1)},{M1},Landis+Gyr,E470\n"
    f"{format_eui(E2).lower()},{CH1:016x},{M2},Landis+Gyr,E470\n"
    f"{format_eui(E3)},{format_eui(CH2)},{M3},Secure,Liberty 100\n"
)


def test_snapshot_with_aliased_headers_answers_every_question(tmp_path: Path) -> None:
    inv, report = import_inventory_csv(_csv(tmp_path, SNAPSHOT))
    assert report.columns == {
        "esme": "ESME ID",
        "comms_hub": "Comms Hub",
        "mpxn": "MPAN Core",
        "manufacturer": "Make",
        "model": "Model",
    }
    assert report.accepted == 3 and report.rejected_count == 0
    view: InventoryView = inv
    assert sorted(view.esmes_for_ch(CH1)) == [E1, E2]  # a CH with two ESMEs
    assert view.esmes_for_ch(CH2) == (E3,)
    assert view.esmes_for_ch(CH3) == ()
    assert view.esmes_for_mpan(M1) == (E1,)
    assert view.esmes_for_mpan(" 1234567890135 ") == (E2,)
    assert view.esmes_for_mpan("12345678901") == ()  # leading zeros make a different MPAN
    assert view.esmes_for_mpan(M3) == (E3,)
    assert view.ch_for_esme(E3) == CH2
    assert view.mpan_for_esme(E3) == M3
    assert view.manufacturer_of(E1) == "Landis+Gyr"
    assert inv.model_of(E3) == "Liberty 100"
    assert view.ch_for_esme(E4) is None and view.mpan_for_esme(E4) is None
    assert view.manufacturer_of(E4) is None


def test_short_aliases_and_semicolons_are_accepted(tmp_path: Path) -> None:
    inv, report = import_inventory_csv(
        _csv(tmp_path, f"esme;ch;mpan\n{format_eui(E1)};{format_eui(CH1)};{M1}\n")
    )
    assert report.columns == {"esme": "esme", "comms_hub": "ch", "mpxn": "mpan"}
    assert inv.esmes_for_ch(CH1) == (E1,)
    assert inv.manufacturer_of(E1) is None


def test_bad_rows_are_reported_with_row_numbers_and_reasons(tmp_path: Path) -> None:
    text = (
        "# exported 2026-03-01\n"
        "esme,comms_hub,mpxn,manufacturer\n"
        f"{format_eui(E1)},{format_eui(CH1)},{M1},LG\n"  # row 3
        "nonsense,00-DB-12-34-56-78-90-A2,1,LG\n"  # row 4
        f"{format_eui(E2)},00-DB-12,{M2},LG\n"  # row 5
        f"{format_eui(E3)},{format_eui(CH2)},12AB,LG\n"  # row 6
        ",,,\n"  # row 7 blank
        f"{format_eui(E1)},{format_eui(CH1)},{M1},LG\n"  # row 8 identical duplicate
        f"{format_eui(E1)},{format_eui(CH2)},{M1},LG\n"  # row 9 conflicting duplicate
        f",{format_eui(CH2)},{M2},LG\n"  # row 10 no ESME
        f"{format_eui(E4)},,,\n"  # row 11: ESME with nothing else known
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text), max_rejects=1000)
    assert [(r["row"], r["reason"]) for r in report.rejected] == [
        (3, "conflicting_duplicate"),
        (4, "bad_esme"),
        (5, "bad_comms_hub"),
        (6, "bad_mpxn"),
        (9, "conflicting_duplicate"),
        (10, "missing_esme"),
    ]
    assert "row 9" in report.rejected[0]["detail"] and "row 3" in report.rejected[4]["detail"]
    assert report.duplicates == 1
    assert report.blank == 1
    assert report.accepted == 1
    assert E1 not in inv  # its rows disagree: which hub it is on is not known
    assert E4 in inv and inv.ch_for_esme(E4) is None and inv.esmes_for_ch(CH2) == ()


def test_header_without_required_columns_is_an_import_error(tmp_path: Path) -> None:
    with pytest.raises(InventoryImportError, match="does not name comms_hub, mpxn"):
        import_inventory_csv(_csv(tmp_path, "esme,meter serial\n"))
    with pytest.raises(InventoryImportError, match="empty file"):
        import_inventory_csv(_csv(tmp_path, "\n\n", "empty.csv"))


def test_learn_adds_moves_and_reports_changes() -> None:
    inv = Inventory()
    assert inv.learn(E1, ch=CH1, mpan=M1, manufacturer="LG", model="E470", at=1000.0) is True
    assert inv.learn(E2, ch=CH1, at=1000.0) is True
    assert sorted(inv.esmes_for_ch(CH1)) == [E1, E2]
    assert inv.learn(E1, ch=CH1, mpan=M1, at=1100.0) is False  # nothing new
    # the CH of E1 is exchanged: E1 moves to CH2, E2 stays behind CH1
    assert inv.learn(E1, ch=CH2, at=1200.0) is True
    assert inv.esmes_for_ch(CH1) == (E2,)
    assert inv.esmes_for_ch(CH2) == (E1,)
    assert inv.ch_for_esme(E1) == CH2
    # the MPAN moves too; the old MPAN no longer answers
    assert inv.learn(E1, mpan=M2, at=1300.0) is True
    assert inv.esmes_for_mpan(M1) == ()
    assert inv.esmes_for_mpan(M2) == (E1,)
    assert inv.manufacturer_of(E1) == "LG"
    with pytest.raises(ValueError):
        inv.learn(-1, ch=CH1)
    with pytest.raises(ValueError):
        inv.learn(E1, ch=2**64 - 1)


def test_learn_updates_lookups_of_a_loaded_snapshot(tmp_path: Path) -> None:
    inv, _ = import_inventory_csv(_csv(tmp_path, SNAPSHOT))
    assert inv.learn(E4, ch=CH1, mpan="9999999999999", manufacturer="Landis+Gyr", at=5.0) is True
    assert sorted(inv.esmes_for_ch(CH1)) == [E1, E2, E4]
    assert inv.learn(E2, ch=CH3) is True
    assert sorted(inv.esmes_for_ch(CH1)) == [E1, E4]
    assert inv.esmes_for_ch(CH3) == (E2,)
    assert inv.esmes_for_mpan("9999999999999") == (E4,)


def test_non_digit_mpxn_learned_from_traffic_is_kept_as_text() -> None:
    inv = Inventory()
    inv.learn(E1, mpan="GB-ABC-1")
    assert inv.esmes_for_mpan("GB-ABC-1") == (E1,)
    assert inv.mpan_for_esme(E1) == "GB-ABC-1"
    assert inv.esmes_for_mpan("GB-ABC-2") == ()


def test_learned_links_carry_only_the_learned_fields(tmp_path: Path) -> None:
    inv, _ = import_inventory_csv(_csv(tmp_path, SNAPSHOT))
    inv.learn(E1, ch=CH3, at=50.0)
    links = list(inv.learned_links())
    assert len(links) == 1
    assert (links[0].esme, links[0].ch, links[0].mpan, links[0].at) == (E1, CH3, None, 50.0)


def test_reload_merges_learned_links_newer_than_the_snapshot(tmp_path: Path) -> None:
    reg = InventoryRegistry(import_inventory_csv(_csv(tmp_path, SNAPSHOT), as_of=100.0)[0])
    reg.learn(E1, ch=CH3, at=150.0)  # seen after the snapshot of t=100
    reg.learn(E2, ch=CH2, at=180.0)
    reg.learn(E4, ch=CH3, mpan="5555555555555")  # no time: counts as newer than any snapshot
    assert sorted(reg.esmes_for_ch(CH3)) == [E1, E4]

    # a new snapshot as of t=170: still shows E1 and E2 on CH1
    fresh = import_inventory_csv(_csv(tmp_path, SNAPSHOT, "new.csv"), as_of=170.0)[0]
    merge = reg.reload(fresh)
    assert reg.current is fresh and reg.generation == 1
    assert merge.as_dict() == {"kept": 2, "superseded": 1}
    assert reg.ch_for_esme(E1) == CH1  # learned at 150 <= 170: the snapshot wins
    assert reg.ch_for_esme(E2) == CH2  # learned at 180 > 170: the learned link wins
    assert sorted(reg.esmes_for_ch(CH3)) == [E4]
    assert reg.mpan_for_esme(E4) == "5555555555555"
    assert reg.mpan_for_esme(E2) == M2  # only the learned field overrides the snapshot

    # a snapshot without a time cannot prove it is newer: learned links win
    merge2 = reg.reload(import_inventory_csv(_csv(tmp_path, SNAPSHOT, "n2.csv"))[0])
    assert merge2.superseded == 0 and reg.ch_for_esme(E2) == CH2


def test_each_learned_link_keeps_its_evidence_time_and_only_newer_evidence_replaces_it(tmp_path: Path) -> None:
    reg = InventoryRegistry(import_inventory_csv(_csv(tmp_path, SNAPSHOT), as_of=100.0)[0])
    assert reg.learn(E1, ch=CH3, at=200.0) is True
    # a message of t=150 arrives late: its hub is older than the one known, its MPAN is news
    assert reg.learn(E1, ch=CH2, mpan="5555555555555", at=150.0) is True
    assert (reg.ch_for_esme(E1), reg.mpan_for_esme(E1)) == (CH3, "5555555555555")
    assert reg.learn(E1, ch=CH1) is False  # without a time: older than any timed evidence
    [link] = reg.current.learned_links()
    assert (link.ch, link.ch_at, link.mpan, link.mpan_at, link.at) == (CH3, 200.0, "5555555555555", 150.0, 200.0)
    # a snapshot as of t=170 supersedes the MPAN learned at 150 but not the hub learned at 200
    merge = reg.reload(import_inventory_csv(_csv(tmp_path, SNAPSHOT, "new.csv"), as_of=170.0)[0])
    assert merge.as_dict() == {"kept": 1, "superseded": 0}
    assert (reg.ch_for_esme(E1), reg.mpan_for_esme(E1)) == (CH3, M1)


def test_a_removal_ends_links_survives_a_reload_it_is_newer_than_and_round_trips_through_csv(tmp_path: Path) -> None:
    reg = InventoryRegistry(import_inventory_csv(_csv(tmp_path, SNAPSHOT), as_of=100.0)[0])
    assert reg.unlink(E1, at=150.0) is True  # E1 decommissioned at 150
    assert (reg.ch_for_esme(E1), reg.mpan_for_esme(E1)) == (None, None) and reg.esmes_for_ch(CH1) == (E2,)
    assert reg.learn(E1, ch=CH1, mpan=M1, at=120.0) is False  # older evidence does not restore it
    assert reg.unlink(E3, at=90.0, mpan=False) is True  # E3's hub link ended at 90
    [e1, e3] = sorted(reg.current.learned_links(), key=lambda x: x.esme)
    assert (e1.ch, e1.mpan, e1.ended, e1.ch_at, e1.mpan_at) == (None, None, ("ch", "mpan"), 150.0, 150.0)
    assert (e3.ch, e3.mpan, e3.ended, e3.ch_at) == (None, None, ("ch",), 90.0)  # its MPAN is not learned
    out = tmp_path / "export.csv"
    reg.current.save_csv(out)
    back, report = Inventory.load_csv(out)
    assert report.rejected_count == 0 and list(back.snapshot_rows()) == list(reg.current.snapshot_rows())
    assert (back.ch_for_esme(E1), back.mpan_for_esme(E1), back.ch_for_esme(E3)) == (None, None, None)
    # a snapshot as of 120 still lists E1 and E3 on their hubs: the removal of 150 is newer, that of 90 is not
    merge = reg.reload(import_inventory_csv(_csv(tmp_path, SNAPSHOT, "new.csv"), as_of=120.0)[0])
    assert merge.as_dict() == {"kept": 1, "superseded": 1}
    assert (reg.ch_for_esme(E1), reg.mpan_for_esme(E1), reg.ch_for_esme(E3)) == (None, None, CH2)


def test_save_csv_and_load_csv_round_trip_learned_links(tmp_path: Path) -> None:
    inv, _ = import_inventory_csv(_csv(tmp_path, SNAPSHOT), as_of=100.0)
    inv.learn(E2, ch=CH3, at=150.5)
    inv.learn(E4, ch=CH2, mpan=M1, manufacturer="Landis+Gyr")
    out = tmp_path / "export.csv"
    inv.save_csv(out)
    back, report = Inventory.load_csv(out)
    assert report.rejected_count == 0 and report.learned == 2
    assert list(back.snapshot_rows()) == list(inv.snapshot_rows())
    assert sorted(back.learned_links(), key=lambda x: x.esme) == sorted(
        inv.learned_links(), key=lambda x: x.esme
    )
    assert sorted(back.esmes_for_mpan(M1)) == [E1, E4]


def test_rows_round_trip_through_from_rows() -> None:
    inv = Inventory()
    inv._put_snapshot_row(E1, CH1, M1, "LG", "E470")
    inv._put_snapshot_row(E3, None, None, None, None)
    inv.learn(E2, ch=CH1, at=7.0)
    rows = list(inv.snapshot_rows())
    assert rows[2] == InventoryRow(E2, CH1, None, None, None, "learned", ("ch",), 7.0)
    again = Inventory.from_rows(rows)
    assert list(again.snapshot_rows()) == rows
    assert sorted(again.esmes_for_ch(CH1)) == [E1, E2]


def test_mpan_keys_keep_leading_zeros() -> None:
    assert mpan_key("0012345678900") != mpan_key("12345678901")
    for text in ("0012345678900", "1234567890126", "7", "000000"):
        key = mpan_key(text)
        assert key is not None and mpan_text(key) == text
    assert mpan_key("12 3456 7890 126") == mpan_key("1234567890126")
    assert mpan_key("12A") is None and mpan_key("") is None and mpan_key("1" * 16) is None


def test_int_index_grows_and_keeps_every_key() -> None:
    rng = random.Random(1)
    keys = [*({rng.getrandbits(64) for _ in range(5000)} - {0, 2**64 - 2}), 0, 2**64 - 2]
    index = _IntIndex()
    for i, k in enumerate(keys):
        assert index.put(k, i) == -1
    assert len(index) == len(keys)
    assert all(index.get(k) == i for i, k in enumerate(keys))
    assert index.get(12345) == -1
    assert index.put(keys[3], 99) == 3 and index.get(keys[3]) == 99


def test_many_esmes_on_clustered_euis_stay_consistent() -> None:
    # sequential EUIs (one manufacturer's range) must not pile up in the probe sequence
    inv = Inventory()
    base = 0x001BC50000000000
    for i in range(3000):
        inv.learn(base + i, ch=base + 0x10000 + i // 2, mpan=f"{1000000000000 + i // 2}")
    assert len(inv) == 3000
    assert sorted(inv.esmes_for_ch(base + 0x10000 + 7)) == [base + 14, base + 15]
    assert sorted(inv.esmes_for_mpan("1000000000007")) == [base + 14, base + 15]
    assert inv.esmes_for_ch(base + 0x20000) == ()


def test_readers_never_see_an_esme_under_the_wrong_hub_while_it_moves() -> None:
    reg = InventoryRegistry()
    for i in range(50):
        reg.learn(E1 + i, ch=CH1)
    stop = threading.Event()
    wrong: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            for ch in (CH1, CH2):
                for esme in reg.esmes_for_ch(ch):
                    if reg.current.ch_for_esme(esme) not in (CH1, CH2):
                        wrong.append(esme)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for k in range(2000):
            reg.learn(E1 + k % 50, ch=CH2 if (k // 50) % 2 == 0 else CH1)
    finally:
        stop.set()
        t.join()
    assert wrong == []
    assert len(reg.esmes_for_ch(CH1)) + len(reg.esmes_for_ch(CH2)) == 50


def test_a_truncated_eui_written_with_0x_is_rejected_not_read_as_another_device(tmp_path: Path) -> None:
    # "0x" + 14 hex digits: the fast parser used to take it as 00-00-DB-12-...: another ESME, another hub
    text = f"esme,comms_hub,mpxn\n0x00DB1234567890,{format_eui(CH1)},{M1}\n{format_eui(E2)},0x00DB1234567890,{M2}\n"
    inv, report = import_inventory_csv(_csv(tmp_path, text + f"{format_eui(E1)},{format_eui(CH1)},{M1}\n"))
    assert [(r["row"], r["reason"]) for r in report.rejected] == [(2, "bad_esme"), (3, "bad_comms_hub")]
    assert 0x00DB1234567890 not in inv and inv.esmes_for_ch(0x00DB1234567890) == ()
    assert inv.esmes_for_ch(CH1) == (E1,)


@pytest.mark.timeout(30)
def test_a_csv_with_carriage_return_line_ends_loads_instead_of_hanging(tmp_path: Path) -> None:
    # Excel for Mac's "CSV (Macintosh)" ends lines with CR alone: the ESME table was sized by counting
    # "\n", so it filled up and the probe loop never ended (start-up or reload hung for ever)
    esmes = [0x00DB123400000000 + i for i in range(1, 301)]
    lines = ["esme,comms_hub,mpxn"] + [
        f"{format_eui(e)},{format_eui(e + 0x1000)},{1000000000000 + i}" for i, e in enumerate(esmes)
    ]
    path = tmp_path / "mac.csv"
    path.write_bytes("\r".join(lines).encode("ascii") + b"\r")
    inv, report = import_inventory_csv(path)
    assert report.accepted == len(esmes) == len(inv) and report.rejected_count == 0
    assert all(inv.ch_for_esme(e) == e + 0x1000 for e in esmes)


def test_a_utf16_inventory_export_is_decoded_by_its_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "inv.csv"
    path.write_bytes(SNAPSHOT.replace(",", "\t").replace("\n", "\r\n").encode("utf-16"))
    inv, report = import_inventory_csv(path)
    assert report.accepted == 3 and report.rejected_count == 0
    assert sorted(inv.esmes_for_ch(CH1)) == [E1, E2]


def test_a_workbook_or_binary_file_given_as_the_inventory_is_an_import_error(tmp_path: Path) -> None:
    book = tmp_path / "inventory.xlsx"
    book.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(
        InventoryImportError, match=r"inventory\.xlsx: a workbook \(zip\), not text: export it as CSV"
    ):
        import_inventory_csv(book)
    nobom = tmp_path / "nobom.csv"
    nobom.write_bytes(SNAPSHOT.encode("utf-16-le"))
    with pytest.raises(InventoryImportError, match=r"nobom\.csv: not a text file \(NUL bytes"):
        import_inventory_csv(nobom)


def test_inventory_csv_errors_and_rows_are_named_by_line(tmp_path: Path) -> None:
    rows = [
        f"{0x00DB000000000000 + i:016X},{0x00DB100000000000 + i:016X},{1000000000000 + i}"
        for i in range(8000)
    ]
    rows[3] = rows[3] + ',"unclosed'
    with pytest.raises(InventoryImportError, match=r"inv\.csv: line \d+: field larger than field limit"):
        import_inventory_csv(_csv(tmp_path, "esme,comms_hub,mpxn,model\n" + "\n".join(rows) + "\n"))
    text = (
        "esme,comms_hub,mpxn,model\n"  # line 1
        f'{format_eui(E1)},{format_eui(CH1)},{M1},"E470\nrev 2"\n'  # lines 2-3
        f"{format_eui(E2)},bad hub,{M2},E470\n"  # line 4
        f'{format_eui(E3)},{format_eui(CH2)},{M3},"never closed\n'  # line 5
        f"{format_eui(E4)},{format_eui(CH3)},{M3},swallowed\n"  # line 6
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text, "lines.csv"))
    assert [(r["row"], r["reason"]) for r in report.rejected] == [(4, "bad_comms_hub")]
    assert [(w["row"], w["reason"]) for w in report.warnings] == [
        (2, "multiline_record"),
        (5, "multiline_record"),
    ]
    assert "lines 5-6" in report.warnings[1]["detail"] and E4 not in inv


def test_an_inventory_that_yields_no_row_is_an_import_error_saying_why(tmp_path: Path) -> None:
    # a column of meter serial numbers under an ESME alias: every row rejected, and the empty
    # inventory (no AD1 joined to any ESME) was accepted
    text = f"meter,comms_hub,mpxn\nLG0001,{format_eui(CH1)},{M1}\nLG0002,{format_eui(CH2)},{M2}\n"
    with pytest.raises(
        InventoryImportError,
        match=r"inv\.csv: no ESME accepted \(2 rows read, 0 blank, 2 rejected: bad_esme 2; first: row 2: bad_esme: ",
    ):
        import_inventory_csv(_csv(tmp_path, text))
    with pytest.raises(InventoryImportError, match=r"blank\.csv: no ESME accepted \(2 rows read, 2 blank"):
        import_inventory_csv(_csv(tmp_path, "esme,comms_hub,mpxn\n,,\n,,\n", "blank.csv"))
    # a header alone is a deliberately empty snapshot
    inv, report = import_inventory_csv(_csv(tmp_path, "esme,comms_hub,mpxn\n", "header.csv"))
    assert len(inv) == 0 and report.rows_read == 0


def test_an_inventory_that_changes_while_it_is_read_is_an_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.inventory as inventory_module

    path = _csv(tmp_path, SNAPSHOT)
    decode = inventory_module.decode_text

    def decode_while_the_copy_goes_on(*args: Any, **kwargs: Any) -> str:
        with path.open("a", encoding="utf-8") as f:  # the copy writes on while the rows are parsed
            f.write(f"{format_eui(E4)},{format_eui(CH3)},{M1},Landis+Gyr,E470\n")
        return decode(*args, **kwargs)

    monkeypatch.setattr(inventory_module, "decode_text", decode_while_the_copy_goes_on)
    with pytest.raises(InventoryImportError, match=r"inv\.csv: changed while it was being read"):
        import_inventory_csv(path)


def test_an_esme_listed_on_two_hubs_is_left_out_and_every_one_of_its_rows_reported(tmp_path: Path) -> None:
    # the first row was kept: E1 joined CH1 although the file also puts it on CH2, so an outage of
    # CH1's premises could be suppressed because of E1's firmware activation
    text = (
        "esme,comms_hub,mpxn\n"
        f"{format_eui(E1)},{format_eui(CH1)},{M1}\n"  # row 2
        f"{format_eui(E2)},{format_eui(CH1)},{M2}\n"  # row 3
        f"{format_eui(E1)},{format_eui(CH1)},{M1}\n"  # row 4: same links, a plain duplicate
        f"{format_eui(E1)},{format_eui(CH2)},{M1}\n"  # row 5: another hub
        f"{format_eui(E3)},{format_eui(CH2)},{M3}\n"  # row 6
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert [(r["row"], r["reason"]) for r in report.rejected] == [
        (2, "conflicting_duplicate"),
        (5, "conflicting_duplicate"),
    ]
    assert "left out" in report.rejected[0]["detail"] and "row 5" in report.rejected[0]["detail"]
    assert E1 not in inv and inv.esmes_for_ch(CH1) == (E2,) and inv.esmes_for_ch(CH2) == (E3,)
    assert inv.esmes_for_mpan(M1) == ()
    assert report.accepted == 2 and report.duplicates == 1 and len(inv) == 2


def test_two_columns_naming_the_same_inventory_field_are_an_error(tmp_path: Path) -> None:
    # "Meter" (serial numbers) and "ESME ID" both name the ESME: the leftmost was taken silently
    text = f"Meter,ESME ID,Comms Hub,MPAN\nLG0001,{format_eui(E1)},{format_eui(CH1)},{M1}\n"
    with pytest.raises(
        InventoryImportError, match=r"header row 1: columns 1 \('Meter'\) and 2 \('ESME ID'\) both name esme"
    ):
        import_inventory_csv(_csv(tmp_path, text))


def test_an_mpan_given_for_esmes_on_different_hubs_is_a_warning(tmp_path: Path) -> None:
    # the AD1 of either hub names the MPAN, so it joins both ESMEs: one's activation can suppress an
    # outage of the other's premises
    text = (
        "esme,comms_hub,mpxn\n"
        f"{format_eui(E1)},{format_eui(CH1)},{M1}\n"
        f"{format_eui(E2)},{format_eui(CH1)},{M1}\n"  # same hub: one premises, no warning
        f"{format_eui(E3)},{format_eui(CH2)},{M1}\n"  # row 4: another hub
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert report.rejected_count == 0 and len(inv) == 3
    assert [(w["row"], w["reason"]) for w in report.warnings] == [(4, "mpxn_on_several_hubs")]
    assert f"MPxN {M1}" in report.warnings[0]["detail"] and "row 2" in report.warnings[0]["detail"]


def test_numbers_excel_wrote_in_scientific_notation_are_explained(tmp_path: Path) -> None:
    text = (
        "esme,comms_hub,mpxn\n"
        f"{format_eui(E1)},{format_eui(CH1)},1.23457E+12\n"
        f"1.23457E+13,{format_eui(CH1)},{M2}\n"
        f"{format_eui(E3)},{format_eui(CH2)},1234567890126.0\n"
        f"{format_eui(E4)},{format_eui(CH2)},{M1}\n"
    )
    _, report = import_inventory_csv(_csv(tmp_path, text))
    assert [(r["row"], r["reason"]) for r in report.rejected] == [
        (2, "bad_mpxn"),
        (3, "bad_esme"),
        (4, "bad_mpxn"),
    ]
    assert all("Excel" in r["detail"] and "Text" in r["detail"] for r in report.rejected)


def test_a_thirteen_digit_mpxn_with_a_wrong_check_digit_is_reported_by_line_and_not_imported(
    tmp_path: Path,
) -> None:
    # 2499999999990: "Bad checksum" in the tests of the public mpan package (its check digit is 1)
    text = (
        "esme,comms_hub,mpxn\n"
        f"{format_eui(E1)},{format_eui(CH1)},{M1}\n"  # row 2: a valid core
        f"{format_eui(E2)},{format_eui(CH1)},2499999999990\n"  # row 3
        f"{format_eui(E3)},{format_eui(CH2)},2499 9999 99990\n"  # row 4: the same, spaced
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert report.rejected_count == 0 and report.accepted == 3
    assert [(w["row"], w["reason"]) for w in report.warnings] == [
        (3, "bad_mpan_check_digit"),
        (4, "bad_mpan_check_digit"),
    ]
    assert report.warnings[0]["detail"] == (
        "MPxN 2499999999990 fails the MPAN check digit (expected 1, not 0): the row is imported without it"
    )
    assert inv.esmes_for_mpan("2499999999990") == ()
    assert inv.mpan_for_esme(E2) is None and inv.mpan_for_esme(E3) is None
    assert inv.ch_for_esme(E2) == CH1 and inv.ch_for_esme(E3) == CH2  # the rows' other links are kept
    assert inv.esmes_for_mpan(M1) == (E1,)


def test_an_mpxn_that_is_not_thirteen_digits_is_reported_by_line_and_not_imported(tmp_path: Path) -> None:
    # every row is an ESME, whose MPxN is its 13-digit MPAN core: a gas meter's MPRN (6 to 10 digits), a
    # cut MPAN or one with digits added would link the ESME to an MPxN no AD1 of it carries; those MPxNs
    # joined AD1s carrying the same digits (the engine now joins none: tests/engine/test_mpan_check_digit.py)
    e5 = 0x00DB1234567890E0
    text = (
        "esme,comms_hub,mpxn\n"
        f"{format_eui(E1)},{format_eui(CH1)},{M1}\n"  # row 2: a valid core
        f"{format_eui(E2)},{format_eui(CH1)},1234567890\n"  # row 3: an MPRN's length
        f"{format_eui(E3)},{format_eui(CH2)},103000671899\n"  # row 4: a core cut short
        f"{format_eui(E4)},{format_eui(CH2)},10300067189970\n"  # row 5: a digit too many
        f"{format_eui(e5)},,0 1030 0067 18997\n"  # row 6: 14 digits with the spaces ignored
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert report.rejected_count == 0 and report.accepted == 5
    assert [(w["row"], w["reason"]) for w in report.warnings] == [
        (3, "mpxn_not_mpan"),
        (4, "mpxn_not_mpan"),
        (5, "mpxn_not_mpan"),
        (6, "mpxn_not_mpan"),
    ]
    assert report.warnings[0]["detail"] == (
        "MPxN 1234567890 is not a 13-digit MPAN core (10 digits; an ESME's MPxN is its MPAN): "
        "the row is imported without it"
    )
    for mpxn in ("1234567890", "103000671899", "10300067189970", "01030006718997"):
        assert inv.esmes_for_mpan(mpxn) == ()
    assert [inv.mpan_for_esme(e) for e in (E2, E3, E4, e5)] == [None] * 4
    assert (inv.ch_for_esme(E2), inv.ch_for_esme(E4), inv.ch_for_esme(e5)) == (CH1, CH2, None)  # rows kept
    assert inv.esmes_for_mpan(M1) == (E1,)


def test_a_learned_row_of_a_saved_inventory_with_a_wrong_check_digit_keeps_its_hub_link(
    tmp_path: Path,
) -> None:
    text = (
        "esme,comms_hub,mpxn,origin,learned_fields,learned_at\n"
        f"{format_eui(E1)},{format_eui(CH1)},2499999999990,learned,ch mpan,1700000000\n"
    )
    inv, report = import_inventory_csv(_csv(tmp_path, text))
    assert [(w["row"], w["reason"]) for w in report.warnings] == [(2, "bad_mpan_check_digit")]
    assert inv.ch_for_esme(E1) == CH1 and inv.mpan_for_esme(E1) is None
