"""Evidence review 18: the RTDS 4.5.0 vectors the MP102B decision depends on, delivered in DUIS as the DSP
delivers them and classified by the real :class:`gateway.pipeline.Classifier` (device signatures checked
against the RTDS key store), decode to the values GBCS.md §5 and §9 state:

- the five CS06 responses: result 0 Success fw 0123ABCE (immediate, counter 1000), 1 No Image Held fw
  0123ABCF (1005), Command Accepted (future-dated 1001 and 1004, cancellation 1002); ESME
  00DB1234567890A0 answering supplier 90B3D51F30010000; the meter's date-time 2015-01-01 00:00:00;
- the 8F66 alert: command counter 1001, execution 2030-01-15 09:00:00Z, Success, fw 0123ABCF; the 8F67
  alert: command counter 1004, execution 2030-01-01 00:00:00Z, Hash Mismatch (2);
- the ECS80 8F36 restoration alert to the network operator: interruption 2014-12-31 23:50:00,
  restoration 2014-12-31 23:59:00.

The same genuine vectors delivered under a DUIS header that does not fit them (an error ResponseCode, a
Service Reference Variant other than 11.3, another request's RequestID) are not evidence, whatever their
device signature (see also tests/duis/test_evidence_review_18.py).

Codec properties (hypothesis): a DLMS date-time with any field "not specified" (0xFF / 0xFFFF) never
becomes an instant, one fully specified with the deviation "not specified" (0x8000) is that UTC instant,
and no 12 octets make the decoder raise; a GBCS GeneralizedTime reads back the instant it was written from.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.duis.encode import encode
from gateway.duis.model import (
    DeviceAlertMessage,
    FutureDatedDeviceAlertMessage,
    Response,
    ResponseHeader,
    ResponseMessage,
)
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import sign
from gateway.engine.events import ActivationResponse, FutureDatedOutcome, SupplyRestored
from gateway.gbcs_keys import DirectoryKeyStore
from gateway.pipeline import Classified, Classifier
from gateway.smki import SigningPolicy
from gateway.testkit.scenario import World
from gbcs.crypto import Verifier
from gbcs.timefmt import DlmsDateTime, GeneralizedTime

ESME = 0x00DB1234567890A0
SUPPLIER = 0x90B3D51F30010000
DNO = 0x90B3D51F30020000
# the DUIS message's own time: inside the RTDS device certificates' validity (2016-04-06..9999)
AT = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)

VectorFn = Callable[[str], bytes]  # the ``vector`` fixture of tests/gbcs/conftest.py


class RtdsLab:
    """DUIS documents around RTDS vectors, XML-signed by a generated DSP, classified against the RTDS keys."""

    def __init__(self, keystore: DirectoryKeyStore) -> None:
        self.world = World.generated("evidence-review-18-rtds")
        self.classifier = Classifier(
            certificates=self.world.certificate_store(),
            signing_policy=SigningPolicy(),
            gbcs_verifier=Verifier(keystore, acb_eui=keystore.acb_eui),
        )

    def _signed(self, doc: Response) -> bytes:
        dsp = self.world.dsp
        return sign(encode(doc), dsp.key, dsp.certificate)

    def response(
        self,
        counter: int,
        payload: bytes | FutureDatedDeviceAlertMessage,
        *,
        code: str = "I0",
        srv: str = "11.3",
    ) -> Classified:
        header = ResponseHeader(
            code,
            AT,
            request_id=MessageId(SUPPLIER, ESME, counter),
            response_id=MessageId(ESME, SUPPLIER, counter),
        )
        body = self._signed(Response(header, ResponseMessage("11.3", srv, payload)))
        return self.classifier.classify("observe", body, AT)

    def device_alert(self, alert_code: int, payload: bytes, counter: int) -> Classified:
        header = ResponseHeader("I0", AT, response_id=MessageId(ESME, DNO, counter))
        body = self._signed(Response(header, DeviceAlertMessage(alert_code.to_bytes(2, "big"), payload)))
        return self.classifier.classify("inline", body, AT)


@pytest.fixture(scope="module")
def lab(keystore: DirectoryKeyStore) -> RtdsLab:
    return RtdsLab(keystore)


def _event(c: Classified) -> object:
    assert c.rejection is None, c.rejection
    assert len(c.events) == 1, c.events
    return c.events[0]


CS06_RESPONSES = [
    # scenario, counter, result, accepted for later, firmware version
    ("IMMEDIATE_SUCCESS", 1000, 0, False, "0123ABCE"),
    ("IMMEDIATE_ERROR", 1005, 1, False, "0123ABCF"),
    ("FUTURE_DATED_SUCCESS", 1001, None, True, None),
    ("FUTURE_DATED_ERROR", 1004, None, True, None),
    ("CANCELLATION_SUCCESS", 1002, None, True, None),
]


@pytest.mark.parametrize(("scenario", "counter", "result", "accepted", "version"), CS06_RESPONSES)
def test_rtds_cs06_responses_classify_to_the_documented_outcomes(
    lab: RtdsLab,
    vector: VectorFn,
    scenario: str,
    counter: int,
    result: int | None,
    accepted: bool,
    version: str | None,
) -> None:
    c = lab.response(counter, vector(f"CS06_11.3_{scenario}_RESPONSE"))
    ev = _event(c)
    assert isinstance(ev, ActivationResponse)
    assert (ev.esme, ev.supplier, ev.counter) == (ESME, SUPPLIER, counter)
    assert (ev.result, ev.accepted_future, ev.firmware_version) == (result, accepted, version)
    assert ev.response_time == AT  # the anchor is the DCC's ResponseDateTime ...
    assert ev.gbcs_time == datetime(2015, 1, 1, tzinfo=UTC)  # ... the meter's own time is kept beside it
    assert ev.originator_matches and ev.counter_matches
    assert ev.verified and c.problems == (), c.problems


@pytest.mark.parametrize(
    ("name", "duis_code", "command_counter", "execution", "result", "succeeded"),
    [
        (
            "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT",
            0x8F66,
            1001,
            datetime(2030, 1, 15, 9, tzinfo=UTC),
            0,
            True,
        ),
        ("CS06_11.3_8F67_FUTURE_DATED_ERROR_ALERT", 0x8F67, 1004, datetime(2030, 1, 1, tzinfo=UTC), 2, False),
    ],
)
def test_rtds_future_dated_outcomes_classify_to_the_documented_values(
    lab: RtdsLab,
    vector: VectorFn,
    name: str,
    duis_code: int,
    command_counter: int,
    execution: datetime,
    result: int,
    succeeded: bool,
) -> None:
    alert = FutureDatedDeviceAlertMessage(duis_code.to_bytes(2, "big"), vector(name), 1, 1)
    c = lab.response(command_counter, alert)
    ev = _event(c)
    assert isinstance(ev, FutureDatedOutcome)
    assert (ev.esme, ev.supplier, ev.command_counter) == (ESME, SUPPLIER, command_counter)
    assert (ev.alert_code, ev.execution_time, ev.result, ev.firmware_version) == (
        duis_code,
        execution,
        result,
        "0123ABCF",
    )
    assert ev.succeeded is succeeded
    assert ev.verified and c.problems == (), c.problems


def test_the_rtds_8f66_under_another_commands_request_id_is_not_evidence(
    lab: RtdsLab, vector: VectorFn
) -> None:
    alert = FutureDatedDeviceAlertMessage(
        b"\x8f\x66", vector("CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"), 1, 1
    )
    c = lab.response(1004, alert)  # the alert names command 1001
    ev = _event(c)
    assert isinstance(ev, FutureDatedOutcome) and not ev.verified
    assert any(p.startswith("gbcs-mismatch:") for p in c.problems), c.problems


def test_an_rtds_8f66_announced_as_8f67_is_not_evidence(lab: RtdsLab, vector: VectorFn) -> None:
    alert = FutureDatedDeviceAlertMessage(
        b"\x8f\x67", vector("CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"), 1, 1
    )
    c = lab.response(1001, alert)
    ev = _event(c)
    assert isinstance(ev, FutureDatedOutcome) and not ev.verified
    assert ev.alert_code == 0x8F66  # the device-signed code is the one read
    assert any("FutureDatedAlertCode 8F67" in p for p in c.problems), c.problems


@pytest.mark.parametrize(("code", "srv"), [("E21", "11.3"), ("E30", "11.3"), ("I0", "11.2")])
def test_the_rtds_immediate_success_response_under_an_unfitting_duis_header_is_not_evidence(
    lab: RtdsLab, vector: VectorFn, code: str, srv: str
) -> None:
    c = lab.response(1000, vector("CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE"), code=code, srv=srv)
    ev = _event(c)
    assert isinstance(ev, ActivationResponse) and ev.result == 0
    assert not ev.verified
    assert any(p.startswith("duis-mismatch:") for p in c.problems), c.problems


def test_the_rtds_8f66_under_an_error_response_code_is_not_evidence(lab: RtdsLab, vector: VectorFn) -> None:
    alert = FutureDatedDeviceAlertMessage(
        b"\x8f\x66", vector("CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"), 1, 1
    )
    c = lab.response(1001, alert, code="E30")
    ev = _event(c)
    assert isinstance(ev, FutureDatedOutcome) and ev.succeeded and not ev.verified
    assert any(p.startswith("duis-mismatch:") and "E30" in p for p in c.problems), c.problems


def test_the_rtds_ecs80_8f36_alert_classifies_to_its_interruption_and_restoration(
    lab: RtdsLab, vector: VectorFn
) -> None:
    c = lab.device_alert(0x8F36, vector("ECS80_NA_8F36_ALERT"), 2003)
    ev = _event(c)
    assert isinstance(ev, SupplyRestored)
    assert (ev.esme, ev.alert_code) == (ESME, 0x8F36)
    assert ev.interruption_time == datetime(2014, 12, 31, 23, 50, tzinfo=UTC)
    assert ev.restoration_time == datetime(2014, 12, 31, 23, 59, tzinfo=UTC)
    assert ev.verified and c.problems == (), c.problems


# ---------------------------------------------------------------------- codec properties

_instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59), timezones=st.just(UTC)
)


def _dlms(value: datetime, *, deviation: bytes = b"\x80\x00", clock_status: int = 0x00) -> bytearray:
    return bytearray(
        value.year.to_bytes(2, "big")
        + bytes((value.month, value.day, value.isoweekday(), value.hour, value.minute, value.second))
        + bytes((value.microsecond // 10_000,))
        + deviation
        + bytes((clock_status,))
    )


@given(_instants)
def test_a_fully_specified_dlms_date_time_without_deviation_is_that_utc_instant(value: datetime) -> None:
    got = DlmsDateTime.from_bytes(bytes(_dlms(value))).to_datetime()
    assert got == value.replace(microsecond=value.microsecond // 10_000 * 10_000)
    assert got is not None and got.utcoffset() == timedelta(0)


# year (2 octets), month, day, hour, minute, second: the fields an instant cannot do without
_REQUIRED = [(0, 2), (2, 1), (3, 1), (5, 1), (6, 1), (7, 1)]


@given(_instants, st.sampled_from(_REQUIRED))
def test_a_dlms_date_time_with_a_not_specified_field_is_no_instant(
    value: datetime, where: tuple[int, int]
) -> None:
    raw = _dlms(value)
    at, n = where
    raw[at : at + n] = b"\xff" * n
    decoded = DlmsDateTime.from_bytes(bytes(raw))
    assert decoded.to_datetime() is None
    assert "*" in decoded.text()


@given(st.binary(min_size=12, max_size=12))
def test_any_twelve_octets_decode_as_a_dlms_date_time_without_raising(raw: bytes) -> None:
    decoded = DlmsDateTime.from_bytes(raw)
    got = decoded.to_datetime()
    assert got is None or got.utcoffset() == timedelta(0)
    decoded.text()
    decoded.unreliable_reason()


@given(_instants)
def test_a_generalized_time_reads_back_the_instant_it_was_written_from(value: datetime) -> None:
    value = value.replace(microsecond=0)
    parsed = GeneralizedTime.parse(value.strftime("%Y%m%d%H%M%SZ").encode())
    assert parsed.value == value
    assert not parsed.is_cancellation


def test_the_cs06_cancellation_marker_is_recognised() -> None:
    assert GeneralizedTime.parse(b"99991231235959Z").is_cancellation
    assert not GeneralizedTime.parse(b"99991231235958Z").is_cancellation
