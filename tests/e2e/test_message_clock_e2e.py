"""End to end, ``clock = "message"`` without ``X-DUISGW-Arrival`` headers (a test team posting captured
messages as they are): ``python -m gateway serve`` as a real process. A DSP-signed message whose own time
is 30 days ahead of the engine clock is refused (400 ``implausible_message_time``), kept in the rejects
table and counted, and does not move the clock: the messages that follow are decided in their own time,
a held AD1 stays held at wall speed until the 8F66 that confirms its activation arrives."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from conftest import Receiver, free_port
from e2ekit import DNO_USER, GatewayProcess, final_decisions, run_cli, write_config
from prometheus_client.parser import text_string_to_metric_families

from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.demo import demo_scenario
from gateway.testkit.scenario import World

pytestmark = pytest.mark.slow


def rejects_total(text: str) -> dict[tuple[str, str], float]:
    return {
        (s.labels["lane"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "duisgw_rejects"
        for s in family.samples
        if s.name == "duisgw_rejects_total"
    }


async def test_an_own_time_30_days_ahead_is_refused_kept_and_counted_and_later_messages_keep_their_timing(
    tmp_path: Path, receiver: Receiver
) -> None:
    world = World.generated("message-clock-e2e")
    demo = demo_scenario(world)  # premises 2: a future-dated activation, its AD1 held until the 8F66
    _esme, ch, mpan = world.meter(9)  # a genuine outage
    reference = world.write_reference(tmp_path / "reference")
    f, t = world.factory, demo.t
    first = TimedMessage(t("07:02"), "inline", f.ad1(ch, mpan, t("07:00"), t("07:02"), 901))
    ahead = TimedMessage(
        t("07:02", days=30), "inline", f.ad1(ch, mpan, t("07:00", days=30), t("07:02", days=30), 902)
    )
    steps = {s.label: s for s in demo.steps}
    labels = (
        "11.3 future-dated 09:00, meter 2",
        "accepted for later",
        "AD1 meter 2 before its 8F66",
        "8F66 meter 2",
    )
    request, accepted, held, outcome = (
        TimedMessage(steps[x].at, steps[x].lane, steps[x].body) for x in labels
    )
    port, admin = free_port(), free_port()
    cfg = write_config(tmp_path / "gateway.toml", port=port, admin_port=admin, reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}])  # fmt: skip
    gw = GatewayProcess(cfg, admin)
    gw.start()
    try:
        await gw.wait_ready()
        async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, send_arrival=False, retry_for=0) as dsp:
            set_clock = await dsp.post(first)
            refused = await dsp.post(ahead)
            unmoved = datetime.fromisoformat((await gw.admin("GET", "/admin/state"))["clock"])
            answers = [await dsp.post(m) for m in (request, accepted, held)]
            await asyncio.sleep(1.0)  # five ticks at wall speed: nothing times out
            while_held = await gw.admin("GET", "/admin/state")
            confirmed = await dsp.post(outcome)
            after = await gw.admin("GET", "/admin/state")
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{admin}/metrics") as resp:
            metrics = await resp.text()
    finally:
        assert gw.terminate() == 0, gw.log_tail()
    assert (set_clock.status, set_clock.decision) == (200, "forward"), set_clock
    assert refused.status == 400 and refused.text.startswith("implausible_message_time: "), refused
    assert "ahead of the engine clock" in refused.text, refused
    assert t("07:02") <= unmoved < t("07:03"), unmoved  # the first message's time, plus wall seconds
    assert [(a.status, a.decision) for a in answers] == [(204, "observe"), (204, "observe"), (202, "hold")], (
        answers
    )
    clock = datetime.fromisoformat(while_held["clock"])
    assert while_held["held"] == 1 and held.at <= clock < held.at + timedelta(seconds=30), while_held
    assert confirmed.status == 204 and after["held"] == 0, (confirmed, after)
    # the refused bytes are in the rejects table, and counted
    listed = run_cli(
        "audit", "rejects", "--config", str(cfg), "--reason", "implausible_message_time", "--json"
    )
    assert listed.returncode == 0, listed.stderr
    [kept] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (kept["lane"], kept["size"]) == ("inline", len(ahead.body))
    assert "ahead of the engine clock" in kept["detail"]
    shown = run_cli("audit", "rejects", "show", str(kept["id"]), "--config", str(cfg))
    assert json.loads(shown.stdout)["sha256"] == hashlib.sha256(ahead.body).hexdigest()
    assert rejects_total(metrics) == {("inline", "implausible_message_time"): 1.0}
    # decided: the first AD1 forwarded, the held one suppressed on its confirmed activation; not the refused
    decided = final_decisions(cfg)
    assert decided[str(set_clock.message_id)] == ("forward", "no-activation")
    assert decided[str(answers[2].message_id)] == ("suppress", "fd-confirmed")
    assert len(decided) == 2, decided
