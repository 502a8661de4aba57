"""A DNO-bound message whose identity the gateway had taken in before on the observation lane (the same
signed message posted to ``/duis/observe`` first: a misrouted copy) reaches its DNO.

It used to be answered ``200 forward`` (the engine's duplicate of an observation, which has no decision) and
never put in the outbox: the DSP was told the message was forwarded and the DNO never got it. It is now
forwarded (fail open: the engine never judged it on the inline lane), its original bytes unchanged, once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiohttp
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running

from gateway.duis.decode import decode
from gateway.service.serve import build_gateway, make_service


async def test_an_inline_message_observed_before_under_its_identity_is_delivered_to_its_dno(
    tmp_path: Path, receiver: Receiver
) -> None:
    lab = make_lab("inline-after-observed", tmp_path / "reference", stream=1, first_meter=340, first_counter=3400)
    [ad1] = lab.stream.steps
    esme = lab.world.meter(340)[0]
    # an 11.3 response (evidence on the observation lane), then the same bytes on the DNO's lane
    body = lab.world.factory.activate_response(esme, 3400, ad1.at - dt.timedelta(minutes=5))
    identity = decode(body).identity
    service = make_service(build_gateway(pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)))
    headers = {"Content-Type": "application/xml"}
    async with running(service), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{service.port}"
        async with http.post(f"{base}/duis/observe", data=body, headers=headers) as resp:
            assert resp.status == 204
        for _ in range(2):  # and its DSP re-delivery: delivered once
            async with http.post(f"{base}/duis/dno/{DNO_USER}", data=body, headers=headers) as resp:
                assert (resp.status, resp.headers["X-DUISGW-Decision"]) == (200, "forward")
        await receiver.wait_for(1)
    assert [(r.message_id, r.body) for r in receiver.log] == [(identity, body)]
