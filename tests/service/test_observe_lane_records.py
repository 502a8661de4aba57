"""The observation lane answers 2xx only after the message is durably recorded, also when it carries
nothing the engine uses: such a message (not evidence, or evidence that failed a check, e.g. a
truncated GBCS payload) is kept in the ``observations`` table with its ORIGINAL bytes and its problems."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

from servicekit import DNO_USER, Receiver, pipeline_config, running

from gateway.duis.model import Response, ResponseHeader, ResponseMessage
from gateway.duis.values import MessageId
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import Scenario, World


async def test_observations_the_engine_cannot_use_are_kept_before_the_204(tmp_path: Path) -> None:
    world = World.generated("observe-records")
    reference = world.write_reference(tmp_path / "reference")
    story = Scenario("observe", world)
    when = story.t("12:00:00")
    esme, ch, mpan = world.meter(5)
    f = world.factory
    ad1 = f.ad1(ch, mpan, when - timedelta(minutes=2), when, 501)  # an alert: not evidence of anything
    good = f.activate_response(esme, 77, when)
    header = ResponseHeader("I0", when, request_id=MessageId(f.supplier_eui, esme, 78),
                            response_id=MessageId(esme, f.supplier_eui, 78))  # fmt: skip
    payload = bytes.fromhex("dd00000000000000")  # a GBCS frame cut short, correctly DSP-signed around it
    truncated = f._dsp_signed(Response(header, ResponseMessage("11.3", "11.3", payload)), None)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER)
        service = make_service(build_gateway(cfg))
        async with running(service):
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(TimedMessage(when, "observe", body)) for body in (ad1, truncated, good)]
            assert [a.status for a in answers] == [204, 204, 204]
    finally:
        await receiver.stop()
    with sqlite3.connect(cfg.store.path) as db:
        rows = db.execute("SELECT lane, kind, reason, detail, body FROM observations ORDER BY id").fetchall()
        kept = {bytes(r[0]) for r in db.execute("SELECT raw FROM messages")}
    assert [(r[0], r[2], bytes(r[4])) for r in rows] == [("observe", "not-evidence", ad1),
                                                         ("observe", "not-evidence", truncated)]  # fmt: skip
    assert rows[0][3] is None and "gbcs" in (rows[1][3] or "").lower()  # the problem is named
    assert good in kept  # evidence goes to the engine's store, as before
