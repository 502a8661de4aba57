"""From DUIS bytes to engine events: parse once, verify both signature layers, classify.

Theory of operation
===================

``Classifier.classify(lane, body, arrival)`` is pure (no I/O, no clock: ``arrival`` is passed in) and
never raises for bad input. It

1. parses the bytes with :func:`gateway.duis.safexml.parse_xml` (DOCTYPE, oversize, encoding and
   well-formedness are named rejections);
2. optionally validates the tree against the DUIS XSD (lxml's validator; a schema-invalid message is
   never evidence and is flagged, but DNO-bound traffic is not blocked for it);
3. verifies the enveloped XML signature on the parsed tree (:func:`gateway.duis.xmldsig.verify`)
   against the SMKI certificate store and the role policy (DSP XML-signing role for responses and
   alerts, the user's XML-signing role for requests), checking certificate validity at the message's
   own time;
4. decodes the DUIS model from the same tree (:func:`gateway.duis.decode.decode_tree`);
5. for the messages the decision depends on, parses the GBCS payload and verifies the *device*
   signature against the device's DS certificate (validity checked at the DUIS message's time; a supplier's
   DS certificate also against the SMKI store's revocation lists: the verifier is given the store), and
   checks that the GBCS identities match the DUIS ones (originator = RequestID target, recipient =
   RequestID originator, same counter, same alert code);
6. returns the engine events the message yields. Evidence carries ``verified=True`` only when every
   signature that matters verified against the right role's certificate; the engine never suppresses
   on anything else.

A message on the inline lane yields exactly one inline event (AD1 → ``PowerOutage``, 8F35–8F3C →
``SupplyRestored``, anything else → ``OtherInline``), possibly preceded by learning events (an 8.2
inventory response the DNO asked for still teaches the inventory). A message on the observation lane
yields zero or more observation events and is never forwarded.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.duis.decode import decode_tree
from gateway.duis.model import (
    ActivateFirmware,
    DCCAlertMessage,
    DeviceAlertMessage,
    DeviceStatusChangeEvent,
    DSPInventory,
    FutureDatedDeviceAlertMessage,
    PowerOutageEvent,
    Request,
    Response,
    ResponseMessage,
    SignedPreCommand,
)
from gateway.duis.safexml import DEFAULT_MAX_BYTES, may_hold_pis, parse_xml
from gateway.duis.schema import DuisSchema
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import VerifyResult, verify
from gateway.engine.effects import DEVICE_CLOCK_UNRELIABLE
from gateway.engine.events import (
    ALERT_FD_FAILURE,
    ALERT_FD_SUCCESS,
    DEVICE_REMOVED,
    HUB_DECOMMISSIONED,
    METER_IDENTITY,
    METER_REMOVED,
    RESTORATION_ALERTS,
    UNSIGNED_MARK,
    ActivationRequested,
    ActivationResponse,
    DeviceStatusChange,
    FutureDatedOutcome,
    InventoryObserved,
    InventoryUnlinked,
    MessageEvent,
    OtherInline,
    PowerOutage,
    SupplyRestored,
    digest_text,
    unsigned_id,
)
from gateway.errors import DuisgwError
from gateway.gbcs_keys import IndexedKeyStore, KeyStoreRef
from gateway.slotpickle import fast_pickle
from gateway.smki import CertificateStore, SigningPolicy, SmkiMaterial, TrustEntry
from gbcs.crypto import Check, Status, Verifier
from gbcs.errors import GbcsError
from gbcs.eui import format_eui
from gbcs.frame import CRA, Frame, parse_frame
from gbcs.keystore import ROLE_SUPPLIER, KeyStore
from gbcs.payload import (
    ActivateFirmwareCommand,
    ActivateFirmwareResponse,
    FirmwareActivationAlert,
    SupplyOutageRestoredAlert,
    decode_payload,
)
from gbcs.timefmt import DlmsDateTime

__all__ = [
    "KEY_INDEX_CORRUPT",
    "Classified",
    "Classifier",
    "ClassifierSpec",
    "LaneName",
    "Rejection",
    "WorkerFailure",
    "classify_chunk",
    "init_worker",
    "message_time",
    "portable",
    "reload_classifier",
    "reload_worker",
    "worker_events",
]

LaneName = Literal["inline", "observe"]

MSG_CS06 = 0x0012
MSG_FD_FIRMWARE_ALERT = 0x00CA
MSG_ECS80 = 0x0067


@fast_pickle
@dataclass(frozen=True, slots=True)
class Rejection:
    """Input that is not a usable DUIS message: a named reason (stable code) and a one-line detail."""

    code: str
    detail: str


@fast_pickle
@dataclass(frozen=True, slots=True)
class Classified:
    """What one received message is, how its signatures fared, and the events it yields."""

    lane: LaneName
    arrival: datetime
    message_id: str
    kind: str
    events: tuple[MessageEvent, ...] = ()
    rejection: Rejection | None = None
    xml: VerifyResult | None = None
    gbcs: Check | None = None
    #: verification problems worth listing in reports (message identity, reason, detail)
    problems: tuple[str, ...] = ()
    doc: Request | Response | None = field(default=None, compare=False, repr=False)
    event_time: datetime | None = None
    device: dict[str, str | None] = field(default_factory=dict)
    #: the message's own time (``ResponseDateTime``) when ``doc`` was dropped (see :func:`portable`)
    doc_time: datetime | None = None

    @property
    def verified(self) -> bool:
        return self.rejection is None and not self.problems


def _proof(problems: Sequence[str], digest: int) -> dict[str, Any]:
    """The ``verified`` / ``verification`` fields of an event made from a message with these problems, and the
    ``digest`` of its bytes (:func:`body_digest`)."""
    return {"verified": not problems, "verification": "; ".join(problems) or "ok", "digest": digest}


def body_digest(body: bytes) -> int:
    """The digest of a message's bytes (the first 96 bits of their SHA-256, an int): on every event it yields
    (:attr:`gateway.engine.events.MessageEvent.digest`); in 24 hex digits (:func:`digest_text`), in the id of one
    whose XML signature did not verify (:func:`unverified_identity`) and of a rejected one. ~1.5 µs for 2 KB."""
    return int.from_bytes(hashlib.sha256(body).digest()[:12])


def _mk_id(doc: Request | Response) -> str:
    return doc.identity


#: a verification problem: an 11.3 CV4 request whose originator the GBCS key store does not show as a Supplier
REQUEST_ROLE_UNVERIFIABLE = "request-role-unverifiable"

#: marks the identity of a message whose XML signature did not verify (see :func:`_unsigned_identity`)
UNVERIFIED_ID_MARK = UNSIGNED_MARK


def unverified_identity(identity: str, body: bytes) -> str:
    """The identity under which a message whose XML signature did not verify is decided (its DUIS
    ``identity`` marked with the digest of its bytes; :func:`_unsigned_identity`)."""
    return unsigned_id(identity, body_digest(body))


def _unsigned_identity(c: Classified, identity: str, digest: int) -> Classified:
    """``c`` (and its events) under ``<identity>#unverified:<digest of its bytes>`` instead of ``identity``.

    The DUIS identity (``ResponseID|kind``, ``RequestID|CV``) is text anyone can write; it is the signer's
    word only when the XML signature verifies against the right role's certificate. A message whose
    signature does not would otherwise be decided under a genuine message's identity before it arrives,
    and the genuine one, answered as its duplicate, would never be used as evidence or reach the DNO. Its
    own re-deliveries (the same bytes) keep one identity and stay duplicates of it. The same bytes whose signature
    verifies at another delivery have both ids: the engine tells them apart by the digest every event carries
    (docs/ENGINE.md §8)."""
    mine = unsigned_id(identity, digest)

    def moved(mid: str) -> str:
        return mine + mid[len(identity) :] if mid.startswith(identity) else mid

    events = tuple(dataclasses.replace(ev, message_id=moved(ev.message_id)) for ev in c.events)
    return dataclasses.replace(c, message_id=moved(c.message_id), events=events)


class Classifier:
    """Turns received DUIS bytes into verified engine events (pure; see the module docstring)."""

    def __init__(
        self,
        *,
        certificates: CertificateStore,
        signing_policy: SigningPolicy,
        gbcs_verifier: Verifier,
        max_bytes: int = DEFAULT_MAX_BYTES,
        tolerate_whitespace: bool = False,
        schema: DuisSchema | None = None,
    ) -> None:
        self.schema = schema
        self.certificates = certificates
        self.signing_policy = signing_policy
        self.gbcs = gbcs_verifier
        self.max_bytes = max_bytes
        self.tolerate_whitespace = tolerate_whitespace

    def with_certificates(self, certificates: CertificateStore) -> Classifier:
        """This classifier with another SMKI store (a reload): the XML-signature verifier and the GBCS
        verifier's revocation source both answer from ``certificates``. A new object: a message being
        classified keeps the classifier it started with, so it is verified against one store throughout."""
        return Classifier(
            certificates=certificates,
            signing_policy=self.signing_policy,
            gbcs_verifier=self.gbcs.with_revocation(certificates),
            max_bytes=self.max_bytes,
            tolerate_whitespace=self.tolerate_whitespace,
            schema=self.schema,
        )

    def with_keystore(self, keystore: KeyStore) -> Classifier:
        """This classifier with another GBCS key store (a reload of ``[pipeline] gbcs_keys``): device
        signatures are checked against ``keystore`` (its ACB EUI too), with the same revocation source. A
        new object, for the same reason as :meth:`with_certificates`."""
        return Classifier(
            certificates=self.certificates,
            signing_policy=self.signing_policy,
            gbcs_verifier=self.gbcs.with_keystore(keystore, acb_eui=getattr(keystore, "acb_eui", None)),
            max_bytes=self.max_bytes,
            tolerate_whitespace=self.tolerate_whitespace,
            schema=self.schema,
        )

    # ------------------------------------------------------------------ entry point

    def classify(self, lane: LaneName, body: bytes, arrival: datetime) -> Classified:
        digest = body_digest(body)  # on every event: the engine tells the same bytes under two ids by it
        try:
            root = parse_xml(body, self.max_bytes)
        except DuisgwError as exc:
            return self._rejected(lane, digest, arrival, exc.code, exc.message)
        try:
            xml = verify(
                root,
                self.certificates,
                self.signing_policy,
                now=arrival,
                tolerate_whitespace=self.tolerate_whitespace,
            )
        except DuisgwError as exc:
            return self._rejected(lane, digest, arrival, exc.code, exc.message)
        signed = xml.valid  # by the right role's certificate: only then is the identity the signer's word
        if self.schema is not None and not self.schema.is_valid(root):
            # never evidence; DNO-bound traffic still flows (fail open: a new DSP enum value must not
            # stop alerts reaching the DNO) — the problem is recorded with the decision
            try:
                detail = "; ".join(self.schema.validate(root)[:3])
            except DuisgwError as exc:  # the validator could not judge the tree
                detail = f"{exc.code}: {exc.message}"
            xml = dataclasses.replace(xml, valid=False, status="schema-invalid", detail=detail)
        try:
            doc = decode_tree(root, pis=may_hold_pis(body))  # (a memchr; the tree is not looked through)
        except DuisgwError as exc:
            return self._rejected(lane, digest, arrival, exc.code, exc.message, xml=xml)
        try:
            if isinstance(doc, Request):
                result = self._request(lane, doc, xml, arrival, digest)
            else:
                result = self._response(lane, doc, xml, arrival, digest)
        except GbcsError as exc:
            # a GBCS payload the decision depends on is unusable: never evidence; inline still decided
            result = self._gbcs_unusable(lane, doc, xml, arrival, exc, digest)
        return result if signed else _unsigned_identity(result, doc.identity, digest)

    # ------------------------------------------------------------------ helpers

    def _rejected(
        self,
        lane: LaneName,
        digest: int,
        arrival: datetime,
        code: str,
        detail: str,
        xml: VerifyResult | None = None,
    ) -> Classified:
        return Classified(
            lane=lane,
            arrival=arrival,
            message_id=f"rejected:{digest_text(digest)}",
            kind="rejected",
            rejection=Rejection(code, detail[:300]),
            xml=xml,
        )

    @staticmethod
    def _xml_problem(xml: VerifyResult) -> str | None:
        if xml.valid:
            return None
        if xml.status == "schema-invalid":
            return f"schema-invalid:{xml.detail[:200]}"
        return f"xml-signature-{xml.status}:{xml.reason}"

    def _gbcs_check(self, frame: Frame, at: datetime) -> Check:
        return self.gbcs.verify_signature(frame, at)

    @staticmethod
    def _gbcs_problem(check: Check) -> str | None:
        if check.status is Status.VALID:
            return None
        return f"gbcs-signature-{check.status.value.replace(' ', '-')}:{check.reason}"

    def _inline_other(
        self,
        doc: Request | Response,
        xml: VerifyResult,
        arrival: datetime,
        problems: Sequence[str],
        digest: int,
        learned: Sequence[MessageEvent] = (),
        event_time: datetime | None = None,
        device: dict[str, str | None] | None = None,
        gbcs: Check | None = None,
    ) -> Classified:
        mid = _mk_id(doc)
        kind = doc.kind if isinstance(doc, Response) else f"Request.{doc.body_kind}"
        event = OtherInline(
            message_id=mid,
            arrival=arrival,
            **_proof(problems, digest),
            description=kind,
            event_time=event_time,
        )
        return Classified(
            lane="inline",
            arrival=arrival,
            message_id=mid,
            kind=kind,
            events=(*learned, event),
            xml=xml,
            gbcs=gbcs,
            problems=tuple(problems),
            doc=doc,
            event_time=event_time,
            device=device or {},
        )

    def _gbcs_unusable(
        self,
        lane: LaneName,
        doc: Request | Response,
        xml: VerifyResult,
        arrival: datetime,
        exc: GbcsError,
        digest: int,
    ) -> Classified:
        problem = f"gbcs-undecodable:{exc.code}: {exc}"[:300]
        problems = tuple(p for p in (self._xml_problem(xml), problem) if p)
        if lane == "inline":
            return self._inline_other(doc, xml, arrival, problems, digest)
        kind = doc.kind if isinstance(doc, Response) else f"Request.{doc.body_kind}"
        return Classified(
            lane=lane, arrival=arrival, message_id=_mk_id(doc), kind=kind, xml=xml, problems=problems, doc=doc
        )

    # ------------------------------------------------------------------ requests (observation lane)

    def _request(
        self, lane: LaneName, doc: Request, xml: VerifyResult, arrival: datetime, digest: int
    ) -> Classified:
        h = doc.header
        problems: list[str] = []
        if (p := self._xml_problem(xml)) is not None:
            problems.append(p)
        kind = f"Request.{doc.body_kind}"
        events: list[MessageEvent] = []
        body = doc.body
        if h.service_reference == "11.3" and isinstance(body, ActivateFirmware | SignedPreCommand):
            gbcs_check: Check | None = None
            if (p := _request_variant_problem(doc, body)) is not None:
                problems.append(p)
            if isinstance(body, SignedPreCommand):
                frame = parse_frame(body.gbcs_payload)
                if frame.message_code != MSG_CS06 or frame.cra != CRA.COMMAND:
                    problems.append(
                        f"gbcs-mismatch:pre-command is message 0x{frame.message_code:04X}, not CS06"
                    )
                elif (
                    frame.recipient != h.request_id.target or frame.originator_counter != h.request_id.counter
                ):
                    problems.append("gbcs-mismatch:pre-command target/counter differ from the RequestID")
                elif frame.originator != h.request_id.originator:
                    # signed by whoever the GBCS originator names: it must be the supplier that XML-signed
                    # the request (the RequestID's originator), not any party with a DS certificate
                    problems.append(
                        f"gbcs-mismatch:pre-command originator {format_eui(frame.originator)} is not the "
                        f"RequestID's originator {format_eui(h.request_id.originator)}"
                    )
                elif (p := _signed_command_mismatch(frame, body)) is not None:
                    problems.append(p)
                # the supplier's GBCS signature is what makes a CV5 request evidence: one that does not
                # verify — invalid, unverifiable (no usable DS certificate for the signer, or one of
                # another role than Supplier: CS06 is a Supplier command, and any DCC User's XML-signing
                # certificate passes the request policy) or absent — leaves the request unverified
                # (never opens a hold, never moves a window's start)
                gbcs_check = self.gbcs.verify_signature(frame, arrival, role=ROLE_SUPPLIER)
                if (p := self._gbcs_problem(gbcs_check)) is not None:
                    problems.append(p)
            elif (why := self.gbcs.role_problem(h.request_id.originator, ROLE_SUPPLIER, arrival)) is not None:
                # a CV4 request carries no supplier signature of its own, and the request policy accepts any
                # DCC User's XML-signing certificate: it is evidence (it opens a hold) only when the key store
                # shows its originator holding the Supplier role (CS06 is the Supplier's command), else any
                # DCC User could hold a premises' AD1s for the hold limit with requests naming itself
                problems.append(f"{REQUEST_ROLE_UNVERIFIABLE}:{why}")
            execution = body.execution_datetime
            events.append(
                ActivationRequested(
                    message_id=_mk_id(doc),
                    arrival=arrival,
                    **_proof(problems, digest),
                    supplier=h.request_id.originator,
                    esme=h.request_id.target,
                    counter=h.request_id.counter,
                    execution_time=None if body.is_cancellation else execution,
                    is_cancellation=body.is_cancellation,
                    seen_at=arrival,
                )
            )
            device: dict[str, str | None] = {"esme": format_eui(h.request_id.target)}
            result = Classified(
                lane=lane,
                arrival=arrival,
                message_id=_mk_id(doc),
                kind=kind,
                events=tuple(events),
                xml=xml,
                gbcs=gbcs_check,
                problems=tuple(problems),
                doc=doc,
                event_time=arrival,
                device=device,
            )
        else:
            result = Classified(
                lane=lane,
                arrival=arrival,
                message_id=_mk_id(doc),
                kind=kind,
                xml=xml,
                problems=tuple(problems),
                doc=doc,
            )
        if lane == "inline":  # a request has no business on the DNO-bound lane: forward it, learn nothing
            return self._inline_other(doc, xml, arrival, problems, digest)
        return result

    # ------------------------------------------------------------------ responses and alerts

    def _response(
        self, lane: LaneName, doc: Response, xml: VerifyResult, arrival: datetime, digest: int
    ) -> Classified:
        problems: list[str] = []
        if (p := self._xml_problem(xml)) is not None:
            problems.append(p)
        body = doc.body
        when = doc.header.response_datetime
        learned: list[MessageEvent] = []
        if isinstance(body, ResponseMessage) and isinstance(body.payload, DSPInventory):
            learned = self._inventory_events(doc, body.payload, problems, arrival, digest)
        elif isinstance(body, DCCAlertMessage) and isinstance(body.alert, DeviceStatusChangeEvent):
            learned = self._status_change_events(doc, body.alert, problems, arrival, digest)

        if lane == "inline":
            if isinstance(body, DCCAlertMessage) and isinstance(body.alert, PowerOutageEvent):
                return self._ad1(doc, body.alert, xml, problems, arrival, digest, learned)
            if isinstance(body, DeviceAlertMessage):
                code = int.from_bytes(body.alert_code, "big") if body.alert_code else -1
                if code in RESTORATION_ALERTS:
                    return self._restoration(doc, body, code, xml, problems, arrival, digest, learned)
            return self._inline_other(doc, xml, arrival, problems, digest, learned, event_time=when)

        # observation lane
        events: list[MessageEvent] = list(learned)
        gbcs_check: Check | None = None
        device: dict[str, str | None] = {}
        event_time: datetime | None = when
        if isinstance(body, ResponseMessage) and body.service_reference == "11.3":
            payload = body.payload
            ev: FutureDatedOutcome | ActivationResponse | None = None
            if isinstance(payload, FutureDatedDeviceAlertMessage | bytes):
                # the device's answer (a CS06 response, or its 8F66/8F67): evidence only when the DSP
                # delivers it as what it is; a PreCommand (the CV4 Transform answer) is no device response
                problems.extend(_response_variant_problems(doc, body))
            if isinstance(payload, FutureDatedDeviceAlertMessage):
                ev, gbcs_check = self._fd_outcome(doc, payload, problems, arrival, digest)
            elif isinstance(payload, bytes):
                ev, gbcs_check = self._activation_response(doc, payload, problems, arrival, digest)
            if ev is not None:
                events.append(ev)
                device = {"esme": format_eui(ev.esme)}
                if isinstance(ev, FutureDatedOutcome):
                    event_time = ev.execution_time
        elif isinstance(body, DCCAlertMessage) and isinstance(body.alert, DeviceStatusChangeEvent):
            alert = body.alert
            events.append(
                DeviceStatusChange(
                    message_id=f"{_mk_id(doc)}#status",
                    arrival=arrival,
                    **_proof(problems, digest),
                    device=alert.device_id,
                    change=alert.change,
                    time=when,
                )
            )
        return Classified(
            lane=lane,
            arrival=arrival,
            message_id=_mk_id(doc),
            kind=doc.kind,
            events=tuple(events),
            xml=xml,
            gbcs=gbcs_check,
            problems=tuple(problems),
            doc=doc,
            event_time=event_time,
            device=device,
        )

    def _ad1(
        self,
        doc: Response,
        ev: PowerOutageEvent,
        xml: VerifyResult,
        problems: list[str],
        arrival: datetime,
        digest: int,
        learned: Sequence[MessageEvent],
    ) -> Classified:
        mid = _mk_id(doc)
        event = PowerOutage(
            message_id=mid,
            arrival=arrival,
            **_proof(problems, digest),
            ch=ev.comms_hub_device_id,
            mpan=ev.mpxn,
            start_time=ev.start_datetime,
            response_time=doc.header.response_datetime,
        )
        return Classified(
            lane="inline",
            arrival=arrival,
            message_id=mid,
            kind=doc.kind,
            events=(*learned, event),
            xml=xml,
            problems=tuple(problems),
            doc=doc,
            event_time=ev.start_datetime,
            device={"ch": format_eui(ev.comms_hub_device_id), "mpan": ev.mpxn},
        )

    def _restoration(
        self,
        doc: Response,
        body: DeviceAlertMessage,
        code: int,
        xml: VerifyResult,
        problems: list[str],
        arrival: datetime,
        digest: int,
        learned: Sequence[MessageEvent],
    ) -> Classified:
        frame = parse_frame(body.gbcs_payload)
        check = self._gbcs_check(frame, doc.header.response_datetime)
        if (p := self._gbcs_problem(check)) is not None:
            problems.append(p)
        typed = decode_payload(frame).typed if frame.message_code == MSG_ECS80 else None

        def other() -> Classified:  # (a restoration alert that cannot be paired: an inline message of its own)
            return self._inline_other(
                doc, xml, arrival, problems, digest, learned, event_time=doc.header.response_datetime, gbcs=check
            )

        if not isinstance(typed, SupplyOutageRestoredAlert):
            problems.append(f"gbcs-mismatch:alert {code:04X} payload is not an ECS80 restoration alert")
            return other()
        if typed.alert_code != code:
            problems.append(f"gbcs-mismatch:DUIS AlertCode {code:04X} but GBCS alert {typed.alert_code:04X}")
        interruption = typed.interruption.to_datetime()
        restoration = typed.restoration.to_datetime()
        mid = _mk_id(doc)
        if interruption is None:
            problems.append("gbcs-undecodable:interruption date-time unspecified")
            return other()
        proof = _proof(problems, digest)  # signatures and identities: whether the message is evidence at all
        doubt = typed.interruption.unreliable_reason()
        if doubt is not None:
            # the device's own clock status says the interruption time (the only time the pairing reads)
            # is invalid or doubtful: recorded as a problem (metric, audit) and never evidence for pairing;
            # the message's signatures stand, so the event keeps their verdict and the engine forwards it
            doubt = f"interruption date-time {doubt}"
            problems.append(f"{DEVICE_CLOCK_UNRELIABLE}:{doubt}")
        event = SupplyRestored(
            message_id=mid,
            arrival=arrival,
            **proof,
            esme=frame.originator,
            alert_code=code,
            interruption_time=_aware(interruption),
            restoration_time=_aware(restoration) if restoration is not None else None,
            clock_unreliable=doubt or "",
        )
        return Classified(
            lane="inline",
            arrival=arrival,
            message_id=mid,
            kind=doc.kind,
            events=(*learned, event),
            xml=xml,
            gbcs=check,
            problems=tuple(problems),
            doc=doc,
            event_time=event.interruption_time,
            device={"esme": format_eui(frame.originator)},
        )

    def _activation_response(
        self, doc: Response, payload: bytes, problems: list[str], arrival: datetime, digest: int
    ) -> tuple[ActivationResponse | None, Check | None]:
        frame = parse_frame(payload)
        if frame.message_code != MSG_CS06 or frame.cra != CRA.RESPONSE:
            problems.append(f"gbcs-mismatch:11.3 response carries message 0x{frame.message_code:04X}")
            return None, None
        h = doc.header
        check = self._gbcs_check(frame, h.response_datetime)
        if (p := self._gbcs_problem(check)) is not None:
            problems.append(p)
        typed = decode_payload(frame).typed
        if not isinstance(typed, ActivateFirmwareResponse):
            problems.append("gbcs-undecodable:CS06 response content")
            return None, check
        rid = h.request_id
        originator_ok = rid is None or rid.target == frame.originator
        counter_ok = rid is None or rid.counter == frame.originator_counter
        if rid is None:
            problems.append("duis-mismatch:11.3 response without RequestID cannot be matched to its request")
        elif frame.recipient != rid.originator:
            # the device answered another party than the supplier whose request this is (GBCS 5: the
            # response goes back to the command's originator): not this request's outcome
            problems.append(_misaddressed("11.3 response", frame, rid))
        raw_time = frame.date_time
        gbcs_time = DlmsDateTime.from_bytes(raw_time).to_datetime() if raw_time is not None else None
        event = ActivationResponse(
            message_id=_mk_id(doc),
            arrival=arrival,
            **_proof(problems, digest),
            esme=frame.originator,
            supplier=frame.recipient,
            counter=frame.originator_counter,
            response_time=h.response_datetime,
            result=typed.response_code,
            accepted_future=typed.accepted_for_later,
            gbcs_time=_aware(gbcs_time) if gbcs_time is not None else None,
            firmware_version=typed.firmware_version.hex().upper() if typed.firmware_version else None,
            originator_matches=originator_ok,
            counter_matches=counter_ok,
        )
        return event, check

    def _fd_outcome(
        self,
        doc: Response,
        payload: FutureDatedDeviceAlertMessage,
        problems: list[str],
        arrival: datetime,
        digest: int,
    ) -> tuple[FutureDatedOutcome | None, Check | None]:
        frame = parse_frame(payload.gbcs_payload)
        if frame.message_code != MSG_FD_FIRMWARE_ALERT or frame.cra != CRA.ALERT:
            # 8F66/8F67 for other (DLMS/GBZ) commands: not a firmware activation
            return None, None
        check = self._gbcs_check(frame, doc.header.response_datetime)
        if (p := self._gbcs_problem(check)) is not None:
            problems.append(p)
        typed = decode_payload(frame).typed
        if not isinstance(typed, FirmwareActivationAlert):
            problems.append("gbcs-undecodable:0x00CA alert content")
            return None, check
        rid = doc.header.request_id
        if rid is None:
            problems.append(
                "duis-mismatch:future-dated outcome without RequestID cannot be matched to its request"
            )
        elif rid.target != frame.originator or rid.counter != typed.originator_counter:
            problems.append(
                "gbcs-mismatch:8F66/8F67 names ESME/counter "
                f"{format_eui(frame.originator)}/{typed.originator_counter}, the RequestID "
                f"{format_eui(rid.target)}/{rid.counter}"
            )
        elif frame.recipient != rid.originator:
            problems.append(_misaddressed("8F66/8F67", frame, rid))
        if typed.alert_code not in (ALERT_FD_SUCCESS, ALERT_FD_FAILURE):
            # 0x00CA reports a future-dated activation with 8F66 (actioned) or 8F67 (not actioned) only
            # (the XSD's FutureDatedAlertCode enumeration; GBCS.md §5): any other code is not its outcome
            problems.append(
                f"gbcs-mismatch:Future Dated Firmware Activation Alert with alert code {typed.alert_code:04X}, "
                "neither 8F66 nor 8F67"
            )
        duis_code = int.from_bytes(payload.alert_code, "big")
        if duis_code != typed.alert_code:
            problems.append(
                f"gbcs-mismatch:FutureDatedAlertCode {duis_code:04X} but GBCS alert {typed.alert_code:04X}"
            )
        execution = typed.execution.value
        event = FutureDatedOutcome(
            message_id=_mk_id(doc),
            arrival=arrival,
            **_proof(problems, digest),
            esme=frame.originator,
            supplier=frame.recipient,
            command_counter=typed.originator_counter,
            execution_time=_aware(execution),
            result=typed.response_code,
            alert_code=typed.alert_code,
            firmware_version=typed.firmware_version.hex().upper(),
        )
        return event, check

    def _inventory_events(
        self, doc: Response, inv: DSPInventory, problems: list[str], arrival: datetime, digest: int
    ) -> list[MessageEvent]:
        chs = [d.device_id for d in inv.devices if d.device_type == "CHF"]
        ch = chs[0] if len(chs) == 1 else None
        return [
            self._learned(
                doc,
                d.device_id,
                ch,
                d.import_mpxn,
                problems,
                arrival,
                digest,
                d.device_manufacturer or None,
                d.device_model or None,
            )
            for d in inv.devices
            if d.device_type == "ESME"
        ]

    def _status_change_events(
        self,
        doc: Response,
        alert: DeviceStatusChangeEvent,
        problems: list[str],
        arrival: datetime,
        digest: int,
    ) -> list[MessageEvent]:
        """A device status change teaches no link; four say links end (``InventoryUnlinked``, as of the
        alert's own time; how the engine reads each: :class:`gateway.engine.events.InventoryUnlinked`).

        - ``MeterDecommissioningOrWithdrawal``: the meter's links are ending (its associated devices, the
          Comms Hub among them, are the devices it was associated with, not a link to keep), whatever the
          meter's type (a gas meter the inventory does not hold as an ESME only leaves a row without
          links). (It used to teach the very link that was ending: a gas meter became its hub's ESME,
          and delivered late it moved an ESME back to its old hub.)
        - ``CHFDecommissioning``: the device is the Comms Hub (the element's name; it has no body): the
          links of the ESMEs behind it end.
        - ``DeviceRemovedFromInventory``: the device, of any type, left the Smart Metering Inventory: its
          links end (the links to it, for a Comms Hub).
        - ``MeterIdentity``: the meter's MPxNs; an MPxN link it contradicts ends, and none is learned (the
          reference gives the alert no meaning beyond its fields: a learned MPAN would widen the AD1 join).

        Events are made whatever the verification; the engine uses only verified ones (the DSP's XML
        signature, as for every DCC alert). The other changes (suspended, restored, recovery) state no
        link."""
        if alert.change not in (METER_REMOVED, HUB_DECOMMISSIONED, DEVICE_REMOVED, METER_IDENTITY):
            return []
        chs = [a.device_id for a in alert.associated_devices if a.device_type == "CHF"]
        m = alert.mpxns
        mpxns = (
            ()
            if m is None
            else tuple(
                v.strip()
                for v in (m.import_mpxn, m.secondary_import_mpan, m.export_mpan)
                if v is not None and v.strip()
            )
        )
        return [
            InventoryUnlinked(
                message_id=f"{_mk_id(doc)}#unlink:{alert.device_id:016X}",
                arrival=arrival,
                **_proof(problems, digest),
                esme=alert.device_id,
                ch=chs[0] if len(chs) == 1 else None,
                mpan=(m.import_mpxn.strip() or None) if m is not None else None,
                change=alert.change,
                time=doc.header.response_datetime,
                mpxns=mpxns if alert.change == METER_IDENTITY else (),
            )
        ]

    @staticmethod
    def _learned(
        doc: Response,
        esme: int,
        ch: int | None,
        mpan: str | None,
        problems: list[str],
        arrival: datetime,
        digest: int,
        manufacturer: str | None = None,
        model: str | None = None,
    ) -> InventoryObserved:
        """A device link seen in this message (one event per ESME, its own identity), at the message's
        own time (``ResponseDateTime``): links are ordered by it, so a late message cannot undo a newer one."""
        return InventoryObserved(
            message_id=f"{_mk_id(doc)}#inv:{esme:016X}",
            arrival=arrival,
            **_proof(problems, digest),
            esme=esme,
            ch=ch,
            mpan=mpan,
            manufacturer=manufacturer,
            model=model,
            time=doc.header.response_datetime,
        )


#: the Command Variants under which DUIS carries each SR 11.3 body (DUIS.md §1.5, §4.1.2): the CV4 (Transform)
#: input is the Service Request, the CV5/6/7 input the Signed Pre-Command; CV 1-3 and 8 are not valid for a
#: critical SRV (the DSP refuses them, E12), so no command reaches the meter
_ACTIVATE_FIRMWARE_CVS = (4,)
_SIGNED_PRE_COMMAND_CVS = (5, 6, 7)


def _request_variant_problem(doc: Request, body: ActivateFirmware | SignedPreCommand) -> str | None:
    """Why an SR 11.3 request is not the Activate Firmware request it looks like (its Service Reference
    Variant is not 11.3, or its Command Variant does not carry its body), or None. The XSD ties neither to
    the body; the decoder only warns."""
    h = doc.header
    if h.service_reference_variant != "11.3":
        return (
            f"duis-mismatch:ServiceReferenceVariant {_shown(h.service_reference_variant)} under ServiceReference "
            "11.3 is not Activate Firmware"
        )
    allowed = _SIGNED_PRE_COMMAND_CVS if isinstance(body, SignedPreCommand) else _ACTIVATE_FIRMWARE_CVS
    if h.command_variant not in allowed:
        return (
            f"duis-mismatch:CommandVariant {h.command_variant} does not carry an 11.3 {type(body).__name__} "
            f"(expected {', '.join(map(str, allowed))})"
        )
    return None


def _response_variant_problems(doc: Response, body: ResponseMessage) -> list[str]:
    """Why an SR 11.3 response carrying a device's answer is not the Activate Firmware outcome it looks like:
    its Service Reference Variant is not 11.3, or its ResponseCode is an error (``E…``: the request failed)
    or a warning (``W…``: none belongs to 11.3), DUIS.md §3. A code of neither family (not in the XSD's
    enumeration) is left to schema validation, as DUIS.md §3 asks (unknown codes pass through)."""
    out: list[str] = []
    if body.service_reference_variant != "11.3":
        out.append(
            f"duis-mismatch:ServiceReferenceVariant {_shown(body.service_reference_variant)} under "
            "ServiceReference 11.3 is not Activate Firmware"
        )
    code = doc.header.response_code
    if code.startswith(("E", "W")):
        out.append(
            f"duis-mismatch:ResponseCode {_shown(code, quote=False)} on an 11.3 response: an error or a warning "
            "(none belongs to 11.3), not the outcome of an activation"
        )
    return out


#: how much of a header value a problem quotes: every DUIS 5.4 ResponseCode and ServiceReferenceVariant fits
_SHOWN_MAX = 16


def _shown(value: str, *, quote: bool = True) -> str:
    """``value`` as a problem quotes it: whole when it is as short as a DUIS 5.4 code, else its start and its
    length. A problem is kept with its message's decision, in the engine's records (its idempotency key's note,
    unverified evidence and the forwards that name it) and in logs: without a schema to bound them, these
    header fields are any text up to the message's size limit."""
    if len(value) <= _SHOWN_MAX:
        return repr(value) if quote else value
    head = value[:_SHOWN_MAX]
    return f"{head!r}… ({len(value)} characters)" if quote else f"{head}… ({len(value)} characters)"


def _misaddressed(what: str, frame: Frame, rid: MessageId) -> str:
    """The problem of a device's answer whose GBCS recipient is not the RequestID's originator."""
    return (
        f"gbcs-mismatch:{what} is addressed to {format_eui(frame.recipient)}, not the "
        f"RequestID's originator {format_eui(rid.originator)}"
    )


def _signed_command_mismatch(frame: Frame, body: SignedPreCommand) -> str | None:
    """Why the CS06 command the supplier signed (what the ESME will execute) is not the request around it,
    or None. The request's ``ExecutionDateTime`` is what the engine reads (immediate, future-dated,
    cancellation); the signed command's ``executionDateTime`` must say the same — absent, the same
    instant (GeneralizedTime has whole seconds), or the cancellation marker ``99991231235959Z`` for the
    DUIS sentinel 3000-12-31 — and its ``originatorCounter`` must be its header's (GBCS.md §5). Raises
    :class:`gbcs.errors.GbcsError` when the content does not decode."""
    typed = decode_payload(frame).typed
    if not isinstance(typed, ActivateFirmwareCommand):
        return "gbcs-mismatch:pre-command content is not a CS06 ActivateFirmware command"
    if typed.originator_counter != frame.originator_counter:
        return (
            f"gbcs-mismatch:pre-command originatorCounter {typed.originator_counter} is not its header "
            f"counter {frame.originator_counter}"
        )
    duis = body.execution_datetime
    signed = typed.execution
    if body.is_cancellation or (signed is not None and signed.is_cancellation):
        agree = body.is_cancellation and signed is not None and signed.is_cancellation
    elif duis is None or signed is None:
        agree = duis is None and signed is None
    else:
        agree = abs(_aware(duis) - signed.value) < timedelta(seconds=1)
    if agree:
        return None

    def said(cancel: bool, when: datetime | None) -> str:
        return "cancellation" if cancel else "immediate" if when is None else when.isoformat()

    return (
        f"gbcs-mismatch:signed pre-command executes {said(typed.is_cancellation, typed.execution_date_time)}, "
        f"the request's ExecutionDateTime says {said(body.is_cancellation, duis)}"
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def describe_classified(c: Classified) -> dict[str, Any]:
    """A JSON-able summary of a classification (for logs and the audit trail)."""
    out: dict[str, Any] = {"message_id": c.message_id, "kind": c.kind, "lane": c.lane}
    if c.rejection is not None:
        out["rejection"] = {"code": c.rejection.code, "detail": c.rejection.detail}
    if c.xml is not None:
        out["xml_signature"] = {"status": c.xml.status, "reason": str(c.xml.reason)}
    if c.gbcs is not None:
        out["gbcs_signature"] = c.gbcs.to_json()
    if c.problems:
        out["problems"] = list(c.problems)
    return out


# ---------------------------------------------------------------------- classification in worker processes


def message_time(c: Classified) -> datetime | None:
    """The message's own time (``ResponseDateTime``; ``None`` for a request or a rejection), whether or
    not the parsed model was kept."""
    if isinstance(c.doc, Response):
        return c.doc.header.response_datetime
    return c.doc_time


def portable(c: Classified) -> Classified:
    """``c`` without the parsed model (small to pickle), its own time kept in ``doc_time``."""
    return dataclasses.replace(c, doc=None, doc_time=message_time(c))


@dataclass(frozen=True)
class ClassifierSpec:
    """What a worker process needs to build the same :class:`Classifier` as the main process
    (paths and flags only: cheap to pickle; the classifier is built once in each worker)."""

    certs: Path
    gbcs_keys: Path
    trust_expired: frozenset[TrustEntry] = frozenset()
    tolerate_whitespace: bool = False
    schema: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    #: the persisted GBCS key index (gateway.gbcs_keys) the gateway process built: mapped, not re-parsed
    keys_index: Path | None = None
    #: revocation lists beyond those in ``certs`` (``[pipeline] crl_dir``: a folder or a file)
    crls: tuple[Path, ...] = ()
    #: the SMKI store's bytes as the gateway process read them (built from, instead of ``certs`` and
    #: ``crls``: every process then holds the same store generation; replaced on a reload)
    smki: SmkiMaterial | None = None
    #: the GBCS key store the gateway process holds (opened from its index, instead of walking
    #: ``gbcs_keys``: every process then holds the same key store generation; replaced on a reload)
    keys: KeyStoreRef | None = None

    def with_smki(self, material: SmkiMaterial) -> ClassifierSpec:
        """This spec with the SMKI store built from ``material`` (a reload: what replacement workers build)."""
        return dataclasses.replace(self, smki=material)

    def with_keys(self, keys: KeyStoreRef) -> ClassifierSpec:
        """This spec with the GBCS key store ``keys`` (a reload: what replacement workers open)."""
        return dataclasses.replace(self, keys=keys)

    @property
    def generation(self) -> str:
        """Names the reference data a classifier built from this spec holds: the SMKI material's digest and
        the GBCS key store's listing digest (empty parts: read from the paths)."""
        smki = self.smki.digest if self.smki is not None else ""
        keys = self.keys.generation if self.keys is not None else ""
        return f"{smki}/{keys}"

    def build(self) -> Classifier:
        from gateway.duis.schema import load_schema
        from gateway.gbcs_keys import load_keystore
        from gateway.smki import CertificateStore, SigningPolicy
        from gbcs.crypto import Verifier

        keystore: KeyStore
        if self.keys is not None:
            keystore = self.keys.open()
        elif self.keys_index is None:
            keystore = load_keystore(self.gbcs_keys)
        else:
            keystore = load_keystore(self.gbcs_keys, index=self.keys_index)
        certificates = (
            self.smki.build()
            if self.smki is not None
            else CertificateStore.from_path(self.certs, crls=self.crls)
        )
        return Classifier(
            certificates=certificates,
            signing_policy=SigningPolicy(trust_expired=self.trust_expired),
            gbcs_verifier=Verifier(
                keystore, acb_eui=getattr(keystore, "acb_eui", None), revocation=certificates
            ),
            max_bytes=self.max_bytes,
            tolerate_whitespace=self.tolerate_whitespace,
            schema=load_schema(self.schema) if self.schema is not None else None,
        )


class _Spec(Protocol):
    def build(self) -> Classifier: ...


@dataclass(frozen=True, slots=True)
class WorkerFailure:
    """A classification that raised in a worker (a bug, never bad input): its exception, as text."""

    error: str


_WORKER: list[Classifier] = []  # the classifier of a worker process (set once by its initializer)
_WORKER_EVENTS: list[str] = []  # what happened in a worker process since worker_events() was last called
_WORKER_HOLDS: dict[str, str] = {}  # what a worker's classifier was built from (reload_classifier)

#: A worker event: the worker's persisted GBCS key index was found corrupt (counted by the gateway).
KEY_INDEX_CORRUPT = "gbcs-key-index-corrupt"

#: A worker event: the worker's TLS listener closed a connection whose handshake a reload overtook, its client
#: revoked by the lists in force (counted by the gateway in ``duisgw_tls_connections_cut_total{listener="server"}``).
TLS_OVERTAKEN_CUT = "tls-overtaken-cut"


def init_worker(spec: _Spec) -> None:
    """In a worker process: build the classifier that :func:`classify_chunk` uses (once), and note in
    :func:`worker_events` when its key index is found corrupt."""
    classifier = spec.build()
    _WORKER[:] = [classifier]
    _WORKER_EVENTS.clear()
    smki, keys = getattr(spec, "smki", None), getattr(spec, "keys", None)
    _WORKER_HOLDS.clear()
    _WORKER_HOLDS.update(
        smki=smki.digest if isinstance(smki, SmkiMaterial) else "",
        keys=keys.generation if isinstance(keys, KeyStoreRef) else "",
    )
    _watch_worker_keystore(classifier)


def _watch_worker_keystore(classifier: Classifier) -> None:
    keystore = classifier.gbcs.keystore
    if isinstance(keystore, IndexedKeyStore):
        keystore.watch_corrupt(lambda _why: _WORKER_EVENTS.append(KEY_INDEX_CORRUPT))


def reload_classifier(
    classifier: Classifier, smki: SmkiMaterial | None, keys: KeyStoreRef | None, holds: dict[str, str]
) -> Classifier:
    """``classifier`` with the SMKI store built from ``smki`` and the GBCS key store opened from ``keys``,
    each only when it differs from what ``holds`` says the classifier was built from (``holds`` is updated:
    ``"smki"`` the material's digest, ``"keys"`` the key store's :attr:`KeyStoreRef.generation`). What a worker
    process does on a reload (the gateway process's classifier is replaced the same way)."""
    if smki is not None and smki.digest != holds.get("smki"):
        classifier = classifier.with_certificates(smki.build())
        holds["smki"] = smki.digest
    if keys is not None and keys.generation != holds.get("keys"):
        classifier = classifier.with_keystore(keys.open())
        holds["keys"] = keys.generation
    return classifier


def reload_worker(smki: SmkiMaterial | None, keys: KeyStoreRef | None) -> None:
    """In a worker process: use the SMKI store built from ``smki`` and the GBCS key store of ``keys`` for the
    next chunk (the chunk being classified, if any, finished with the previous ones: this runs between
    chunks). Only what changed is rebuilt."""
    was = _WORKER[0]
    _WORKER[0] = reload_classifier(was, smki, keys, _WORKER_HOLDS)
    if _WORKER[0].gbcs.keystore is not was.gbcs.keystore:
        _watch_worker_keystore(_WORKER[0])


def worker_events() -> list[str]:
    """In a worker: the events (:data:`KEY_INDEX_CORRUPT`) since the last call, for the gateway's metrics."""
    out = _WORKER_EVENTS[:]
    _WORKER_EVENTS.clear()
    return out


def classify_chunk(chunk: Sequence[tuple[LaneName, bytes, datetime]]) -> list[Classified | WorkerFailure]:
    """In a worker: classify each message of ``chunk`` (in order) with the worker's classifier; the
    results are :func:`portable` (the decoded model stays in the worker). One message that raises does
    not fail its neighbours."""
    clf = _WORKER[0]
    out: list[Classified | WorkerFailure] = []
    for lane, body, when in chunk:
        try:
            out.append(portable(clf.classify(lane, body, when)))
        except Exception as exc:  # a bug: reported to the caller of this message only
            out.append(WorkerFailure(f"{type(exc).__name__}: {exc}"[:500]))
    return out
