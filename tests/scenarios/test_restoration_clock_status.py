"""A restoration alert (ECS80 8F36) whose device marks its own interruption time invalid, doubtful or of
invalid clock status (DLMS clock-status bits 0, 1, 3) is never paired with a suppressed AD1: it is
forwarded (``not-paired``, flag and evidence ``device-clock-unreliable``) and the problem is recorded.
The same alert with a clean, unspecified (0xFF) or merely informative status (different clock base,
daylight saving) pairs as before. Signed messages from the test kit, through ``duisgw replay``
(classifier, XML and GBCS signature checks, engine, SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.testkit.scenario import Scenario, World
from tests.scenarios.support import check_expected, replay


@pytest.fixture
def world() -> World:
    return World.generated()


def _suppressed_outage_then(world: World, name: str, **clock: int) -> tuple[Scenario, str]:
    """Meter 1 activates at 09:00:40, its hub's AD1 (09:03:30) is suppressed, then its restoration."""
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario(name, world)
    s.observe("09:00:40", f.activate_response(esme, 1000, s.t("09:00:40")))
    s.inline("09:07", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:07"), 1), "suppress", "activation-window")
    s.inline("09:09", f.restoration(esme, s.t("09:03:30"), s.t("09:06"), s.t("09:09"), **clock), "forward")
    return s, s.steps[-1].message_id


@pytest.mark.parametrize(
    ("status", "named"),
    [
        (0x01, "invalid-value"),
        (0x02, "doubtful-value"),
        (0x08, "invalid-clock-status"),
        (0x85, "invalid-value"),  # with daylight saving and a different clock base: still invalid
    ],
)
def test_a_restoration_whose_interruption_time_the_device_doubts_is_not_paired(
    world: World, tmp_path: Path, status: int, named: str
) -> None:
    s, mid = _suppressed_outage_then(world, f"doubt-{status:02x}", interruption_clock_status=status)
    got = replay(s, tmp_path)
    line = got[mid]
    assert (line["decision"], line["reason"]) == ("forward", "not-paired")
    assert line["flags"] == ["device-clock-unreliable"]
    reason = f"interruption date-time clock status 0x{status:02X} ("
    [problem] = line["verification"]
    assert problem.startswith("device-clock-unreliable:" + reason) and named in problem, problem
    [evidence] = line["evidence"]
    assert evidence["role"] == "device-clock-unreliable" and evidence["message_id"] == mid
    assert evidence["detail"].startswith(reason)
    # the AD1 stays suppressed: only the restoration's pairing is refused
    check_expected(s, got)


@pytest.mark.parametrize("status", [0x00, 0x04, 0x80, 0xFF], ids=["ok", "clock-base", "dst", "unspecified"])
def test_the_same_restoration_with_a_clock_status_that_raises_no_doubt_is_paired(
    world: World, tmp_path: Path, status: int
) -> None:
    s, mid = _suppressed_outage_then(world, f"clean-{status:02x}", interruption_clock_status=status)
    line = replay(s, tmp_path)[mid]
    assert (line["decision"], line["reason"]) == ("suppress", "restoration-paired")
    assert "flags" not in line and "verification" not in line
    assert [e["role"] for e in line["evidence"]] == ["suppressed-outage"]


def test_a_doubtful_restoration_time_alone_does_not_stop_the_pairing(world: World, tmp_path: Path) -> None:
    # the pairing reads only the interruption time; the restoration time (and the alert's time stamp) is
    # recorded as the device states it, and no decision reads it
    s, mid = _suppressed_outage_then(world, "restoration-doubt", restoration_clock_status=0x03)
    line = replay(s, tmp_path)[mid]
    assert (line["decision"], line["reason"]) == ("suppress", "restoration-paired")


def test_a_restoration_the_device_doubts_does_not_wait_for_a_held_ad1(world: World, tmp_path: Path) -> None:
    # an AD1 held for its activation's outcome: a clean restoration waits for it and is paired when the
    # AD1 is suppressed; one whose interruption time the device doubts is decided on arrival, forwarded
    esme, ch, mpan = world.meter(1)
    f = world.factory
    s = Scenario("held", world)
    s.observe("09:00:00", f.activate_request(esme, 1000))
    s.inline(
        "09:05", f.ad1(ch, mpan, s.t("09:03:30"), s.t("09:05"), 1), "suppress", "activation-window", held=True
    )
    doubtful = f.restoration(
        esme, s.t("09:03:30"), s.t("09:06"), s.t("09:06"), interruption_clock_status=0x02
    )
    s.inline("09:06", doubtful, "forward", "not-paired", held=False)
    clean = f.restoration(esme, s.t("09:03:30"), s.t("09:06"), s.t("09:06:30"))
    s.inline("09:06:30", clean, "suppress", "restoration-paired", held=True)
    s.observe("09:07", f.activate_response(esme, 1000, s.t("09:07")))
    check_expected(s, replay(s, tmp_path))
