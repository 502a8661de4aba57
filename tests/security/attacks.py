"""The attack catalogue: each entry builds one :class:`~tests.security.lab.Case` on its own premises.

Every attack is staged so that, had its evidence been genuine, the target AD1 would be suppressed:
an in-scope ESME with a Comms Hub in the inventory, evidence timed to put the AD1 inside the window.
The ``control`` entries are exactly that genuine evidence — they must suppress, which proves the
harness can observe a suppression at all.

Timeline of the day (2026-03-02, UTC): an immediate activation answers at 09:00:40 and the AD1
starts at 09:03:30 (arrives 09:07); a future-dated activation is requested at 08:00 for 11:00, its
8F66 arrives 11:01 and the AD1 starts 11:00:50 (arrives 11:04).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.duis.decode import decode
from gateway.duis.encode import encode
from gateway.duis.model import Response, ResponseMessage
from gateway.duis.xmldsig import sign
from gateway.testkit.messages import MSG_FD_FIRMWARE_ALERT, SUPPLIER_EUI, cs06_alert_content
from gbcs.crypto import sign_frame
from gbcs.eui import format_eui
from gbcs.frame import build_general_signing
from tests.security import lab as L
from tests.security.lab import OTHER, Case, Lab, t

RESP_AT = t("09:00:40")
#: another supplier (GITTESTSUPPLIER2's EUI in the RTDS set): not the originator of the lab's requests
OTHER_SUPPLIER_EUI = 0x90B3D51F30030000
AD1_START, AD1_AT = t("09:03:30"), t("09:07")
FD_REQ, FD_EXEC, FD_ALERT = t("08:00"), t("11:00"), t("11:01")
FD_AD1_START, FD_AD1_AT = t("11:00:50"), t("11:04")
OLD = -14  # days


@dataclass(frozen=True)
class Attack:
    category: str
    name: str
    build: Callable[[Lab, int], Case]
    known_bug: str | None = None  # a finding: the attack DOES suppress (test marked xfail strict)
    control: bool = False  # genuine evidence: must suppress


def _counter(n: int) -> int:
    return 1000 + n


def response(lab: Lab, n: int, at: datetime = RESP_AT, **kw: object) -> bytes:
    esme, _ch, _mpan = lab.meter(n)
    return lab.f.activate_response(esme, _counter(n), at, **kw)  # type: ignore[arg-type]


def ad1(lab: Lab, n: int, start: datetime = AD1_START, at: datetime = AD1_AT, counter: int = 0) -> bytes:
    _esme, ch, mpan = lab.meter(n)
    return lab.f.ad1(ch, mpan, start, at, counter or 500 + n)


def immediate(evidence: Callable[[Lab, int], bytes]) -> Callable[[Lab, int], Case]:
    """Stage: forged/altered immediate-activation evidence at 09:00:40, then the AD1."""

    def build(lab: Lab, n: int) -> Case:
        return Case().attack(RESP_AT, "observe", evidence(lab, n)).target(AD1_AT, ad1(lab, n))

    return build


def fd_request(lab: Lab, n: int) -> bytes:
    return lab.f.activate_request(lab.meter(n)[0], _counter(n), execution=FD_EXEC)


def future_dated(outcome: Callable[[Lab, int], bytes]) -> Callable[[Lab, int], Case]:
    """Stage: a genuine future-dated request, then a forged/altered 8F66, then the AD1."""

    def build(lab: Lab, n: int) -> Case:
        return (
            Case()
            .setup(FD_REQ, "observe", fd_request(lab, n))
            .attack(FD_ALERT, "observe", outcome(lab, n))
            .target(FD_AD1_AT, ad1(lab, n, FD_AD1_START, FD_AD1_AT))
        )

    return build


def fd_outcome(lab: Lab, n: int, **kw: object) -> bytes:
    return lab.f.future_dated_outcome(lab.meter(n)[0], _counter(n), FD_EXEC, FD_ALERT, **kw)  # type: ignore[arg-type]


def gbcs_8f_alert(
    lab: Lab,
    esme_n: int,
    code: int,
    counter: int,
    key_n: int | None = None,
    result: int = 0,
    recipient: int = SUPPLIER_EUI,
) -> bytes:
    """A device-signed 0x00CA alert frame (8F66/8F67) from meter ``esme_n``'s ESME to ``recipient``."""
    frame = build_general_signing(
        cra=3, originator_counter=0x200000 + esme_n, originator=lab.meter(esme_n)[0], recipient=recipient,
        message_code=MSG_FD_FIRMWARE_ALERT, content=cs06_alert_content(code, FD_EXEC, counter, result, b"\x01\x23\xab\xcf"),
    )  # fmt: skip
    return sign_frame(frame, lab.device_key(esme_n if key_n is None else key_n))


# ------------------------------------------------------------------ builders needing more than one message


def _xsw(variant: str) -> Callable[[Lab, int], Case]:
    """Wrapping: the genuine signed message is a *failed* activation (result 3) of this meter; the
    forged Body claims success. Variants: the signed Header/Body moved into ds:Object, the signed
    Body moved under a new Header element, a second Body before / after the signed one."""

    def build(lab: Lab, n: int) -> Case:
        genuine = response(lab, n, result=3)
        forged = response(lab, n, signer=lab.forger)
        body = {
            "object": lambda: L.wrap_in_object(genuine, forged),
            "sibling": lambda: L.wrap_in_sibling(genuine, forged),
            "body-before": lambda: L.inject_second_body(genuine, forged, before=True),
            "body-after": lambda: L.inject_second_body(genuine, forged, before=False),
        }[variant]()
        return Case().attack(RESP_AT, "observe", body).target(AD1_AT, ad1(lab, n))

    return build


def _transplant(lab: Lab, n: int) -> Case:
    # the genuine Signature of another meter's (genuine) activation pasted onto this meter's forgery
    donor = response(lab, OTHER + n)
    forged = response(lab, n, signer=lab.forger)
    return (
        Case().attack(RESP_AT, "observe", L.transplant_signature(donor, forged)).target(AD1_AT, ad1(lab, n))
    )


def _forger_names_genuine_cert(lab: Lab, n: int) -> bytes:
    forged = response(lab, n, signer=lab.forger)
    dsp = lab.world.dsp.certificate
    return L.set_key_info(forged, issuer=dsp.issuer.rfc4514_string(), serial=dsp.serial_number)


def _evidence_other_esme(lab: Lab, n: int) -> Case:
    # genuine evidence for the other premises' ESME, AD1 for this meter's Comms Hub
    return Case().attack(RESP_AT, "observe", response(lab, OTHER + n)).target(AD1_AT, ad1(lab, n))


def _evidence_other_ch(lab: Lab, n: int) -> Case:
    # genuine evidence for this ESME; the AD1 names the other premises' Comms Hub and MPAN. (An AD1
    # naming another CH but THIS meter's MPAN is joined through the MPAN by design — a re-homed CH —
    # and is not an attack: the AD1 itself is DSP-signed.)
    _o, other_ch, other_mpan = lab.meter(OTHER + n)
    return (
        Case()
        .attack(RESP_AT, "observe", response(lab, n))
        .target(AD1_AT, lab.f.ad1(other_ch, other_mpan, AD1_START, AD1_AT, 500 + n))
    )


def _fd_other_esme(lab: Lab, n: int) -> bytes:
    # DUIS RequestID names this meter; the GBCS 8F66 is the other ESME's (genuinely device-signed)
    return fd_outcome(lab, n, raw_gbcs=gbcs_8f_alert(lab, OTHER + n, 0x8F66, _counter(n)))


def _fd_identity(kind: str) -> Callable[[Lab, int], Case]:
    """A DSP-signed 8F66 wrapper whose RequestID names this meter's pending command, carrying a
    genuine device-signed 8F66 of another ESME (``esme``) or of another command counter
    (``counter``); the AD1 is the one that 8F66's own identity would explain."""

    def build(lab: Lab, n: int) -> Case:
        other = OTHER + n
        if kind == "esme":
            gbcs = gbcs_8f_alert(lab, other, 0x8F66, _counter(n))
            target_n = other
        else:
            gbcs = gbcs_8f_alert(lab, n, 0x8F66, _counter(n) + 50)
            target_n = n
        return (
            Case()
            .setup(FD_REQ, "observe", fd_request(lab, n))
            .attack(FD_ALERT, "observe", fd_outcome(lab, n, raw_gbcs=gbcs))
            .target(FD_AD1_AT, ad1(lab, target_n, FD_AD1_START, FD_AD1_AT))
        )

    return build


def _fd_code_mismatch(lab: Lab, n: int) -> bytes:
    # DUIS FutureDatedAlertCode 8F66 (success) but the device-signed GBCS alert is 8F67 (failure)
    return fd_outcome(lab, n, success=True, raw_gbcs=gbcs_8f_alert(lab, n, 0x8F67, _counter(n), result=3))


def _payload_of(body: bytes) -> bytes:
    doc = decode(body)
    assert isinstance(doc, Response) and isinstance(doc.body, ResponseMessage) and doc.body.gbcs_payload
    return doc.body.gbcs_payload


def _gbcs_tampered(lab: Lab, n: int) -> bytes:
    # a device-signed failure (result 3) turned into success (0) in the GBCS content; the DSP signs it
    failed = response(lab, n, result=3)
    doc = decode(failed)
    assert isinstance(doc, Response)
    raw = _payload_of(failed)
    i = raw.index(b"\x02\x01\x03\x04\x04")  # DER INTEGER 3, then the OCTET STRING version
    forged = raw[:i] + b"\x02\x01\x00" + raw[i + 3 :]
    dsp = lab.world.dsp
    return sign(
        encode(Response(doc.header, ResponseMessage("11.3", "11.3", forged))), dsp.key, dsp.certificate
    )


def _payload_swapped(lab: Lab, n: int) -> bytes:
    # a DSP-signed failure response whose GBCSPayload is swapped, after signing, for the genuine
    # device-signed success payload of the same command
    failed = response(lab, n, result=3)
    success = _payload_of(response(lab, n))
    return L.set_text(failed, "GBCSPayload", base64.b64encode(success).decode("ascii"))


def _no_cert_esme(lab: Lab, n: int) -> Case:
    # an in-scope ESME whose DS certificate is not in the key store; GBCS signed by a forger's key
    m = L.NO_CERT + (n % 5)
    esme = 0x00DB_0000_0000_0000 | m
    ch = 0x00DC_0000_0000_0000 | m
    forger_dev = lab.forger_pki.device(esme)
    f = lab.factory_with_device_key(lambda _eui: forger_dev.private_key)
    return (
        Case()
        .attack(RESP_AT, "observe", f.activate_response(esme, _counter(n), RESP_AT))
        .target(AD1_AT, lab.f.ad1(ch, lab.meter(m)[2], AD1_START, AD1_AT, 500 + n))
    )


def _replay_same(lab: Lab, n: int) -> Case:
    old = response(lab, n, t("09:00:40", days=OLD))
    return (
        Case()
        .setup(t("09:00:40", days=OLD), "observe", old)
        .attack(RESP_AT, "observe", old)
        .target(AD1_AT, ad1(lab, n))
    )


def _replay_first_time(lab: Lab, n: int) -> Case:
    old = response(lab, n, t("09:00:40", days=OLD))  # never delivered before: first seen today
    return Case().attack(RESP_AT, "observe", old).target(AD1_AT, ad1(lab, n))


def _replay_new_response_id(lab: Lab, n: int) -> Case:
    old = response(lab, n, t("09:00:40", days=OLD))
    esme = lab.meter(n)[0]
    new_id = f"{format_eui(esme)}:{format_eui(SUPPLIER_EUI)}:{_counter(n) + 7}"
    return (
        Case()
        .setup(t("09:00:40", days=OLD), "observe", old)
        .attack(RESP_AT, "observe", L.set_text(old, "ResponseID", new_id))
        .target(AD1_AT, ad1(lab, n))
    )


def _replay_redated(lab: Lab, n: int) -> Case:
    old = response(lab, n, t("09:00:40", days=OLD))
    return (
        Case()
        .attack(RESP_AT, "observe", L.set_text(old, "ResponseDateTime", "2026-03-02T09:00:40Z"))
        .target(AD1_AT, ad1(lab, n))
    )


def _replay_resigned_by_forger(lab: Lab, n: int) -> Case:
    # the old genuine payload (device-signed GBCS kept) re-dated to today and re-signed by a forger
    return Case().attack(RESP_AT, "observe", response(lab, n, signer=lab.forger)).target(AD1_AT, ad1(lab, n))


def _replay_old_request_and_response(lab: Lab, n: int) -> Case:
    esme = lab.meter(n)[0]
    req = lab.f.activate_request(esme, _counter(n))  # a supplier-signed request: no time of its own
    old = response(lab, n, t("09:00:40", days=OLD))
    return (
        Case()
        .setup(t("09:00:00", days=OLD), "observe", req)
        .setup(t("09:00:40", days=OLD), "observe", old)
        .attack(t("09:00:00"), "observe", req)
        .attack(RESP_AT, "observe", old)
        .target(AD1_AT, ad1(lab, n))
    )


def _replay_old_8f66_on_pending(lab: Lab, n: int) -> Case:
    # a genuine 8F66 of two weeks ago (execution two weeks ago) re-delivered while a future-dated
    # activation with the same counter is pending for today
    esme = lab.meter(n)[0]
    old_exec = t("11:00", days=OLD)
    old = lab.f.future_dated_outcome(esme, _counter(n), old_exec, t("11:01", days=OLD))
    return (
        Case()
        .setup(FD_REQ, "observe", fd_request(lab, n))
        .attack(FD_ALERT, "observe", old)
        .target(FD_AD1_AT, ad1(lab, n, FD_AD1_START, FD_AD1_AT))
    )


def _expired_backdated(lab: Lab, n: int) -> Case:
    # a stolen key of an expired DSP certificate, the message back-dated into its validity: the
    # signature verifies at the message's own time, so the activation is anchored two days ago
    at = t("09:00:40", days=-2)
    return (
        Case()
        .attack(RESP_AT, "observe", response(lab, n, at, signer=lab.expired))
        .target(AD1_AT, ad1(lab, n))
    )


def _revoked_backdated(lab: Lab, n: int) -> Case:
    # a DSP key revoked at 09:00:00 (on the CRL the gateway holds), the response dated 08:59:50 - before the
    # revocation - and delivered at 09:00:40: the message's own time is written with the revoked key
    return (
        Case()
        .attack(
            RESP_AT, "observe", response(lab, n, L.REVOKED_AT - timedelta(seconds=10), signer=lab.revoked)
        )
        .target(AD1_AT, ad1(lab, n))
    )


def _cancel(kind: str) -> Callable[[Lab, int], Case]:
    def build(lab: Lab, n: int) -> Case:
        esme = lab.meter(n)[0]
        if kind == "none":
            cancel = L.strip_signature(lab.f.activate_request(esme, _counter(n) + 1, cancellation=True))
        else:  # "dno": the DNO's own valid XML signature on a request naming the supplier
            signer = {"forger": lab.forger, "dno": lab.world.dno_xml}[kind]
            cancel = lab.f.activate_request(esme, _counter(n) + 1, cancellation=True, signer=signer)
        return (
            Case()
            .setup(FD_REQ, "observe", fd_request(lab, n))
            .attack(t("09:00"), "observe", cancel)
            .target(FD_AD1_AT, ad1(lab, n, FD_AD1_START, FD_AD1_AT))
        )

    return build


def _forged_request(lab: Lab, n: int) -> Case:
    esme = lab.meter(n)[0]
    req = lab.f.activate_request(esme, _counter(n), signer=lab.forger)
    return Case().attack(t("09:00"), "observe", req).target(AD1_AT, ad1(lab, n))


def _comment_identity_collision(lab: Lab, n: int) -> Case:
    # a genuine AD1 (counter 10) is suppressed by a genuine activation; hours later a REAL outage
    # AD1 (counter 101) has a comment injected into its ResponseID text: its signature still
    # verifies (C14N without comments) but the decoder reads "...:10" and takes it for a duplicate
    real = ad1(lab, n, t("13:00"), t("13:04"), counter=101)
    rid_len = len(real.split(b"<sr:ResponseID>")[1].split(b"<")[0])
    return (
        Case()
        .setup(RESP_AT, "observe", response(lab, n))
        .setup(AD1_AT, "inline", ad1(lab, n, counter=10))
        .target(t("13:04"), L.inject_comment(real, "ResponseID", rid_len - 1), attack=True)
    )


def _control_immediate(lab: Lab, n: int) -> Case:
    return Case().setup(RESP_AT, "observe", response(lab, n)).target(AD1_AT, ad1(lab, n))


def _control_fd(lab: Lab, n: int) -> Case:
    return (
        Case()
        .setup(FD_REQ, "observe", fd_request(lab, n))
        .setup(FD_ALERT, "observe", fd_outcome(lab, n))
        .target(FD_AD1_AT, ad1(lab, n, FD_AD1_START, FD_AD1_AT))
    )




ATTACKS: list[Attack] = [
    Attack("control", "genuine immediate activation", _control_immediate, control=True),
    Attack("control", "genuine future-dated activation + 8F66", _control_fd, control=True),
    # forged XML signatures
    Attack("xml-signature", "SignatureValue bit flip", immediate(lambda lab, n: L.flip_signature_value(response(lab, n)))),
    Attack("xml-signature", "DigestValue bit flip", immediate(lambda lab, n: L.flip_digest_value(response(lab, n)))),
    Attack("xml-signature", "re-signed with an unknown key", immediate(lambda lab, n: response(lab, n, signer=lab.forger))),
    Attack("xml-signature", "forger's key, KeyInfo names the genuine DSP certificate", immediate(_forger_names_genuine_cert)),
    Attack("xml-signature", "failure response: GBCSPayload swapped for a success after signing", immediate(
        _payload_swapped)),
    Attack("xml-signature", "no signature", immediate(lambda lab, n: L.strip_signature(response(lab, n)))),
    Attack("xml-signature", "wrapping: signed Header/Body moved into ds:Object, forged Body in place", _xsw("object")),
    Attack("xml-signature", "wrapping: signed Body moved under the Header, forged Body in place", _xsw("sibling")),
    Attack("xml-signature", "second sr:Body injected before the signed one", _xsw("body-before")),
    Attack("xml-signature", "second sr:Body injected after the signed one", _xsw("body-after")),
    Attack("xml-signature", "Signature not the last child", immediate(lambda lab, n: L.signature_not_last(response(lab, n)))),
    Attack("xml-signature", "two Signatures (genuine + another message's)", immediate(
        lambda lab, n: L.two_signatures(response(lab, n), response(lab, OTHER + n)))),
    Attack("xml-signature", "Signature moved into the Body (nested)", immediate(
        lambda lab, n: L.signature_nested(response(lab, n)))),
    Attack("xml-signature", "genuine Signature of another message transplanted", _transplant),
    # valid signatures by the wrong role
    Attack("wrong-role", "supplier XML-signing (0x87) on a DSP response", immediate(
        lambda lab, n: response(lab, n, signer=lab.world.supplier))),
    Attack("wrong-role", "DNO XML-signing (0x87) on a DSP response", immediate(
        lambda lab, n: response(lab, n, signer=lab.world.dno_xml))),
    Attack("wrong-role", "organisation DS certificate (0x02) on a DSP response", immediate(
        lambda lab, n: response(lab, n, signer=lab.supplier_ds))),
    Attack("wrong-role", "ACB device-facing certificate (0x04) with the DCC EUI", immediate(
        lambda lab, n: response(lab, n, signer=lab.acb))),
    Attack("wrong-role", "DSP role (0x89) but the supplier's EUI", immediate(
        lambda lab, n: response(lab, n, signer=lab.dsp_wrong_eui))),
    # certificate lookup and validity
    Attack("certificate", "unknown certificate serial", immediate(
        lambda lab, n: L.set_key_info(response(lab, n), serial=lab.world.dsp.certificate.serial_number + 2))),
    Attack("certificate", "unknown issuer, genuine serial", immediate(
        lambda lab, n: L.set_key_info(response(lab, n), issuer="CN=Z99,OU=07"))),
    Attack("certificate", "expired DSP certificate (at the message's time)", immediate(
        lambda lab, n: response(lab, n, signer=lab.expired))),
    Attack("certificate", "not-yet-valid DSP certificate", immediate(lambda lab, n: response(lab, n, signer=lab.not_yet))),
    Attack("certificate", "expired key, message back-dated into its validity", _expired_backdated),
    Attack("certificate", "DSP certificate revoked on the organisation CRL", immediate(
        lambda lab, n: response(lab, n, signer=lab.revoked))),
    Attack("certificate", "revoked DSP key, message back-dated to before the revocation", _revoked_backdated),
    # GBCS device signatures
    Attack("gbcs-signature", "CS06 response signed by another device's key", immediate(
        lambda lab, n: lab.factory_with_device_key(lambda _e: lab.device_key(OTHER + n)).activate_response(
            lab.meter(n)[0], _counter(n), RESP_AT))),
    Attack("gbcs-signature", "CS06 response without a device signature", immediate(
        lambda lab, n: lab.factory_with_device_key(lambda _e: None).activate_response(
            lab.meter(n)[0], _counter(n), RESP_AT))),
    Attack("gbcs-signature", "CS06 result changed after the device signed (DSP re-signed)", immediate(_gbcs_tampered)),
    Attack("gbcs-signature", "ESME without a DS certificate, signed by a forger's device key", _no_cert_esme),
    Attack("gbcs-signature", "8F66 signed by another device's key", future_dated(
        lambda lab, n: lab.factory_with_device_key(lambda _e: lab.device_key(OTHER + n)).future_dated_outcome(
            lab.meter(n)[0], _counter(n), FD_EXEC, FD_ALERT))),
    Attack("gbcs-signature", "8F66 without a device signature", future_dated(
        lambda lab, n: lab.factory_with_device_key(lambda _e: None).future_dated_outcome(
            lab.meter(n)[0], _counter(n), FD_EXEC, FD_ALERT))),
    # identities that do not line up
    Attack("identity", "GBCS originator is another ESME than the RequestID's", immediate(
        lambda lab, n: response(lab, n, gbcs_originator=lab.meter(OTHER + n)[0]))),
    Attack("identity", "GBCS counter differs from the RequestID's", immediate(
        lambda lab, n: response(lab, n, gbcs_counter=_counter(n) + 1))),
    Attack("identity", "genuine evidence for another ESME (another CH)", _evidence_other_esme),
    Attack("identity", "genuine evidence, AD1 of other premises (CH and MPAN)", _evidence_other_ch),
    Attack("identity", "8F66 GBCS from another ESME than the RequestID's", future_dated(_fd_other_esme)),
    Attack("identity", "8F66 wrapper names meter A, GBCS is ESME B's; AD1 of B", _fd_identity("esme")),
    Attack("identity", "8F66 GBCS command counter differs from the RequestID's", _fd_identity("counter")),
    Attack("identity", "FutureDatedAlertCode 8F66 but GBCS alert 8F67", future_dated(_fd_code_mismatch)),
    Attack("identity", "CS06 response addressed (GBCS recipient) to another supplier than the RequestID's", immediate(
        lambda lab, n: response(lab, n, gbcs_recipient=OTHER_SUPPLIER_EUI))),
    Attack("identity", "8F66 addressed (GBCS recipient) to another supplier than the RequestID's", future_dated(
        lambda lab, n: fd_outcome(lab, n, raw_gbcs=gbcs_8f_alert(lab, n, 0x8F66, _counter(n), recipient=OTHER_SUPPLIER_EUI)))),
    # replays of old genuine evidence
    Attack("replay", "14-day-old activation re-delivered (same bytes, same ResponseID)", _replay_same),
    Attack("replay", "14-day-old activation delivered for the first time today", _replay_first_time),
    Attack("replay", "14-day-old activation with a new ResponseID", _replay_new_response_id),
    Attack("replay", "14-day-old activation re-dated to today", _replay_redated),
    Attack("replay", "old payload re-dated and re-signed by a forger", _replay_resigned_by_forger),
    Attack("replay", "old supplier request + old response re-delivered today", _replay_old_request_and_response),
    Attack("replay", "old 8F66 (same counter) while an activation is pending today", _replay_old_8f66_on_pending),
    # cancellations and requests
    Attack("cancellation", "cancellation signed by an unknown key", _cancel("forger")),
    Attack("cancellation", "cancellation signed by the DNO (naming the supplier)", _cancel("dno")),
    Attack("cancellation", "unsigned cancellation", _cancel("none")),
    Attack("cancellation", "immediate 11.3 request signed by an unknown key", _forged_request),
    # comment injection (XML canonicalisation excludes comments)
    Attack("comment-injection", "comment in a real outage AD1's ResponseID makes it a 'duplicate'",
           _comment_identity_collision),
]  # fmt: skip
