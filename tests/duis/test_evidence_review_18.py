"""Evidence review 18: DUIS messages that decode "successfully" but must not become activation evidence.

Each message below is XML-signed by the DSP (or the supplier, for requests) with the right role's
certificate and carries a GBCS payload signed by the device (or the supplier's DS key), so every
signature verifies: what makes it unusable is what the DUIS layer itself says, read against DUIS
Schema V5.4 and DUIS.md (§1.5 command variants, §3 response codes, §4.1 SR 11.3, §4.1.4
FutureDatedDeviceAlertMessage):

- an 11.3 response or future-dated outcome whose ``ResponseCode`` is an error (``E…``: the DSP
  reports the request failed) or a warning (``W…``: no W-code belongs to 11.3); a code of neither
  family is left to schema validation (tests/scenarios/test_schema_validation.py);
- an ``ActivateFirmware`` / ``SignedPreCommand`` under ``ServiceReference`` 11.3 whose
  ``ServiceReferenceVariant`` is not 11.3 (the XSD does not tie the two together);
- an 11.3 request whose ``CommandVariant`` does not fit its body (``ActivateFirmware`` is the CV4
  input, ``SignedPreCommand`` the CV5/6/7 one; CV 1-3 are not valid for a critical SRV): the DSP
  refuses it (E12) and no command reaches the meter;
- a Future Dated Firmware Activation Alert (GBCS 0x00CA) whose alert code is neither 8F66 nor 8F67
  (the XSD's FutureDatedAlertCode enumeration; GBCS.md §5).

Such a message used to yield a *verified* event (the inconsistency was at most a model warning), so
a CV1 request opened a pending activation that holds the premises' AD1s, and an error response
anchored an immediate-activation window that suppresses them. Each is now classified with a problem
(``duis-mismatch`` / ``gbcs-mismatch``): recorded, never evidence. The well-formed twin of every case
is checked to be verified evidence, so each test measures the one field it changes.

An 11.3 *synchronous* response carrying the CV4 ``PreCommand`` is not a device response at all: it
yields no event and no problem (it used to be parsed as a CS06 response and reported as a GBCS
mismatch).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.duis.encode import encode
from gateway.duis.model import (
    ActivateFirmware,
    FutureDatedDeviceAlertMessage,
    PreCommand,
    Request,
    RequestHeader,
    Response,
    ResponseHeader,
    ResponseMessage,
    SignedPreCommand,
)
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import sign
from gateway.engine.events import ActivationRequested, ActivationResponse, FutureDatedOutcome
from gateway.gbcs_keys import load_keystore
from gateway.pipeline import Classified, Classifier
from gateway.smki import SigningPolicy
from gateway.testkit.messages import (
    MSG_CS06,
    MSG_FD_FIRMWARE_ALERT,
    SUPPLIER_EUI,
    cs06_alert_content,
    cs06_command_content,
    cs06_response_content,
)
from gateway.testkit.scenario import World
from gbcs.crypto import Verifier, sign_frame
from gbcs.frame import build_general_signing

T = datetime(2026, 3, 2, 9, 0, 40, tzinfo=UTC)
EXECUTION = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
IMAGE_HASH = bytes.fromhex("AA758690730934FF0685AA758690730934FF0685657788990011223344556677")


class Lab:
    """A generated world (DSP, supplier, one ESME with its DS certificate) and its real classifier."""

    def __init__(self, tmp: Path, seed: str = "evidence-review-18") -> None:
        self.world = World.generated(seed)
        self.esme, _ch, _mpan = self.world.meter(1)
        ref = self.world.write_reference(tmp / "reference")
        keystore = load_keystore(ref["gbcs_keys"])
        self.classifier = Classifier(
            certificates=self.world.certificate_store(),
            signing_policy=SigningPolicy(),
            gbcs_verifier=Verifier(keystore, acb_eui=getattr(keystore, "acb_eui", None)),
        )

    # -- GBCS payloads, signed by the ESME (responses, alerts) or the supplier's DS key (pre-commands)

    def _device_signed(self, eui: int, frame: bytes) -> bytes:
        key = self.world.factory.device_key(eui)
        assert key is not None
        return sign_frame(frame, key)

    def cs06_response(self, counter: int, result: int | None = 0) -> bytes:
        frame = build_general_signing(
            cra=2,
            originator_counter=counter,
            originator=self.esme,
            recipient=SUPPLIER_EUI,
            message_code=MSG_CS06,
            content=cs06_response_content(result),
        )
        return self._device_signed(self.esme, frame)

    def cs06_alert(self, alert_code: int, command_counter: int, result: int = 0) -> bytes:
        frame = build_general_signing(
            cra=3,
            originator_counter=0x200001,
            originator=self.esme,
            recipient=SUPPLIER_EUI,
            message_code=MSG_FD_FIRMWARE_ALERT,
            content=cs06_alert_content(alert_code, EXECUTION, command_counter, result, b"\x01\x23\xab\xcf"),
        )
        return self._device_signed(self.esme, frame)

    def pre_command(self, counter: int, *, signed: bool = True) -> bytes:
        frame = build_general_signing(
            cra=1,
            originator_counter=counter,
            originator=SUPPLIER_EUI,
            recipient=self.esme,
            message_code=MSG_CS06,
            content=cs06_command_content(IMAGE_HASH, counter, None),
        )
        return self._device_signed(SUPPLIER_EUI, frame) if signed else frame

    # -- DUIS documents

    def response(self, counter: int, message: ResponseMessage, code: str = "I0") -> bytes:
        header = ResponseHeader(
            code,
            T,
            request_id=MessageId(SUPPLIER_EUI, self.esme, counter),
            response_id=MessageId(self.esme, SUPPLIER_EUI, counter),
        )
        dsp = self.world.dsp
        return sign(encode(Response(header, message)), dsp.key, dsp.certificate)

    def request(self, counter: int, cv: int, srv: str, body: ActivateFirmware | SignedPreCommand) -> bytes:
        doc = Request(RequestHeader(MessageId(SUPPLIER_EUI, self.esme, counter), cv, "11.3", srv), body)
        sup = self.world.supplier
        return sign(encode(doc), sup.key, sup.certificate)

    def observe(self, body: bytes) -> Classified:
        return self.classifier.classify("observe", body, T)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("evidence-review-18"))


def _only_event(c: Classified) -> object:
    assert c.rejection is None, c.rejection
    assert len(c.events) == 1, c.events
    return c.events[0]


def _is_evidence(c: Classified) -> bool:
    return all(getattr(ev, "verified", False) for ev in c.events) and c.verified


# ---------------------------------------------------------------------- ResponseCode


@pytest.mark.parametrize("code", ["I0", "I99"])
def test_an_informational_11_3_response_is_evidence(lab: Lab, code: str) -> None:
    c = lab.observe(lab.response(1000, ResponseMessage("11.3", "11.3", lab.cs06_response(1000)), code))
    ev = _only_event(c)
    assert isinstance(ev, ActivationResponse) and ev.result == 0
    assert _is_evidence(c), c.problems


@pytest.mark.parametrize("code", ["E21", "E30", "E1", "W110101"])
def test_an_11_3_response_whose_response_code_is_an_error_or_a_warning_is_not_evidence(
    lab: Lab, code: str
) -> None:
    c = lab.observe(lab.response(1000, ResponseMessage("11.3", "11.3", lab.cs06_response(1000)), code))
    ev = _only_event(c)
    assert isinstance(ev, ActivationResponse)
    assert not ev.verified
    assert any(p.startswith("duis-mismatch:") and code in p for p in c.problems), c.problems


def test_a_future_dated_outcome_whose_response_code_is_an_error_is_not_evidence(lab: Lab) -> None:
    alert = FutureDatedDeviceAlertMessage(b"\x8f\x66", lab.cs06_alert(0x8F66, 1001), 1, 1)
    good = lab.observe(lab.response(1001, ResponseMessage("11.3", "11.3", alert)))
    assert isinstance(_only_event(good), FutureDatedOutcome) and _is_evidence(good), good.problems
    bad = lab.observe(lab.response(1001, ResponseMessage("11.3", "11.3", alert), "E30"))
    ev = _only_event(bad)
    assert isinstance(ev, FutureDatedOutcome) and not ev.verified
    assert any(p.startswith("duis-mismatch:") and "E30" in p for p in bad.problems), bad.problems


# ---------------------------------------------------------------------- ServiceReferenceVariant


@pytest.mark.parametrize("srv", ["11.2", "11.1", "11.3.1"])
def test_an_11_3_response_under_another_service_reference_variant_is_not_evidence(lab: Lab, srv: str) -> None:
    c = lab.observe(lab.response(1000, ResponseMessage("11.3", srv, lab.cs06_response(1000))))
    ev = _only_event(c)
    assert isinstance(ev, ActivationResponse) and not ev.verified
    assert any(p.startswith("duis-mismatch:") and srv in p for p in c.problems), c.problems


def test_a_future_dated_outcome_under_another_service_reference_variant_is_not_evidence(lab: Lab) -> None:
    alert = FutureDatedDeviceAlertMessage(b"\x8f\x66", lab.cs06_alert(0x8F66, 1001), 1, 1)
    c = lab.observe(lab.response(1001, ResponseMessage("11.3", "11.2", alert)))
    ev = _only_event(c)
    assert isinstance(ev, FutureDatedOutcome) and not ev.verified
    assert any(p.startswith("duis-mismatch:") for p in c.problems), c.problems


def test_an_11_3_request_under_another_service_reference_variant_is_not_evidence(lab: Lab) -> None:
    good = lab.observe(lab.request(1000, 4, "11.3", ActivateFirmware(IMAGE_HASH)))
    assert isinstance(_only_event(good), ActivationRequested) and _is_evidence(good), good.problems
    c = lab.observe(lab.request(1000, 4, "11.2", ActivateFirmware(IMAGE_HASH)))
    ev = _only_event(c)
    assert isinstance(ev, ActivationRequested) and not ev.verified
    assert any(p.startswith("duis-mismatch:") and "11.2" in p for p in c.problems), c.problems


# ---------------------------------------------------------------------- CommandVariant


@pytest.mark.parametrize("cv", [1, 2, 3, 5, 6, 7, 8])
def test_an_activate_firmware_body_outside_command_variant_4_is_not_evidence(lab: Lab, cv: int) -> None:
    c = lab.observe(lab.request(1000, cv, "11.3", ActivateFirmware(IMAGE_HASH, EXECUTION)))
    ev = _only_event(c)
    assert isinstance(ev, ActivationRequested) and not ev.verified
    assert any(p.startswith("duis-mismatch:") and f"CommandVariant {cv}" in p for p in c.problems), c.problems


@pytest.mark.parametrize("cv", [5, 6, 7])
def test_a_signed_pre_command_under_command_variant_5_6_or_7_is_evidence(lab: Lab, cv: int) -> None:
    c = lab.observe(lab.request(1000, cv, "11.3", SignedPreCommand(lab.pre_command(1000))))
    ev = _only_event(c)
    assert isinstance(ev, ActivationRequested)
    assert _is_evidence(c), c.problems


@pytest.mark.parametrize("cv", [1, 4, 8])
def test_a_signed_pre_command_outside_command_variants_5_to_7_is_not_evidence(lab: Lab, cv: int) -> None:
    c = lab.observe(lab.request(1000, cv, "11.3", SignedPreCommand(lab.pre_command(1000))))
    ev = _only_event(c)
    assert isinstance(ev, ActivationRequested) and not ev.verified
    assert any(p.startswith("duis-mismatch:") and f"CommandVariant {cv}" in p for p in c.problems), c.problems


# ---------------------------------------------------------------------- the 0x00CA alert code


@pytest.mark.parametrize("alert_code", [0x8F68, 0x8F72, 0x8F36, 0x0000])
def test_a_future_dated_firmware_alert_with_neither_8f66_nor_8f67_is_not_evidence(
    lab: Lab, alert_code: int
) -> None:
    # the DUIS FutureDatedAlertCode agrees with the device-signed GBCS one, so only the code itself is wrong
    alert = FutureDatedDeviceAlertMessage(
        alert_code.to_bytes(2, "big"), lab.cs06_alert(alert_code, 1001), 1, 1
    )
    c = lab.observe(lab.response(1001, ResponseMessage("11.3", "11.3", alert)))
    ev = _only_event(c)
    assert isinstance(ev, FutureDatedOutcome) and not ev.verified
    assert any(p.startswith("gbcs-mismatch:") and f"{alert_code:04X}" in p for p in c.problems), c.problems


@pytest.mark.parametrize(("alert_code", "result"), [(0x8F66, 0), (0x8F67, 2), (0x8F67, 3)])
def test_8f66_and_8f67_alerts_are_evidence(lab: Lab, alert_code: int, result: int) -> None:
    alert = FutureDatedDeviceAlertMessage(
        alert_code.to_bytes(2, "big"), lab.cs06_alert(alert_code, 1001, result), 1, 1
    )
    c = lab.observe(lab.response(1001, ResponseMessage("11.3", "11.3", alert)))
    ev = _only_event(c)
    assert isinstance(ev, FutureDatedOutcome) and (ev.alert_code, ev.result) == (alert_code, result)
    assert ev.succeeded is (alert_code == 0x8F66)
    assert _is_evidence(c), c.problems


# ---------------------------------------------------------------------- the CV4 Transform response


def test_an_11_3_pre_command_response_is_neither_evidence_nor_a_gbcs_mismatch(lab: Lab) -> None:
    # the synchronous answer to a CV4 request: the unsigned pre-command for the supplier to sign
    message = ResponseMessage("11.3", "11.3", PreCommand("4.0", lab.pre_command(1000, signed=False)))
    c = lab.observe(lab.response(1000, message))
    assert c.rejection is None
    assert c.events == ()
    assert c.problems == ()
