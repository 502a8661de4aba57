"""Signed DUIS messages for scenarios, demos and captures.

A :class:`MessageFactory` builds the messages the MP102B decision depends on — 11.3 requests,
11.3 device responses (GBCS CS06), future-dated outcome alerts (GBCS 0x00CA 8F66/8F67), AD1 power
outage alerts, ECS80 restoration alerts (8F35–8F3C), 8.2 inventory responses — as DUIS models encoded
with :func:`gateway.duis.encode.encode`, their GBCS payloads built with :mod:`gbcs.frame` and signed by
the device's DS key (:func:`gbcs.crypto.sign_frame`), and the DUIS document XML-signed
(:func:`gateway.duis.xmldsig.sign`) by the DSP (responses, alerts) or the supplier (requests).

Identifier conventions follow DUIS.md §2.3: a device response's ResponseID swaps the RequestID's
originator and target and keeps the counter; alerts carry ResponseID ``source : recipient : counter``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.duis.encode import encode
from gateway.duis.model import (
    ActivateFirmware,
    DCCAlertMessage,
    DeviceAlertMessage,
    DSPInventory,
    FutureDatedDeviceAlertMessage,
    InventoryDevice,
    PowerOutageEvent,
    Request,
    RequestHeader,
    Response,
    ResponseHeader,
    ResponseMessage,
    SignedPreCommand,
)
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import sign
from gbcs.crypto import sign_frame
from gbcs.frame import build_general_signing

__all__ = [
    "DCC_EUI",
    "DNO_EUI",
    "SUPPLIER_EUI",
    "MessageFactory",
    "Signer",
    "cs06_alert_content",
    "cs06_command_content",
    "cs06_response_content",
    "dlms_datetime",
    "ecs80_content",
]

DCC_EUI = 0x90B3D51F30000002
SUPPLIER_EUI = 0x90B3D51F30010000
DNO_EUI = 0x90B3D51F30020000

MSG_CS06 = 0x0012
MSG_FD_FIRMWARE_ALERT = 0x00CA
MSG_ECS80 = 0x0067


@dataclass(frozen=True)
class Signer:
    """An XML-signing credential: private key + certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


# ------------------------------------------------------------------ GBCS content encoders (DER / DLMS)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _der_int(value: int) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)  # room for the sign bit
    return _tlv(0x02, value.to_bytes(length, "big", signed=True))


def _gentime(value: datetime) -> bytes:
    return _tlv(0x18, value.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def cs06_command_content(image_hash: bytes, counter: int, execution: datetime | None) -> bytes:
    """``SEQUENCE { OCTET STRING(32) imageHash, INTEGER originatorCounter, GeneralizedTime exec OPTIONAL }``."""
    body = _tlv(0x04, image_hash) + _der_int(counter)
    if execution is not None:
        body += _gentime(execution)
    return _tlv(0x30, body)


def cs06_response_content(result: int | None, firmware_version: bytes = b"\x01\x23\xab\xce") -> bytes:
    """Immediate outcome ``SEQUENCE { INTEGER code, OCTET STRING(4) version }``, or ``NULL`` (accepted)."""
    if result is None:
        return b"\x05\x00"
    return _tlv(0x30, _der_int(result) + _tlv(0x04, firmware_version))


def cs06_alert_content(
    alert_code: int, execution: datetime, command_counter: int, result: int, firmware_version: bytes
) -> bytes:
    """0x00CA: ``SEQUENCE { alertCode, executionDateTime, originatorCounter, SEQUENCE { code, version } }``."""
    outcome = _tlv(0x30, _der_int(result) + _tlv(0x04, firmware_version))
    return _tlv(0x30, _der_int(alert_code) + _gentime(execution) + _der_int(command_counter) + outcome)


def dlms_datetime(value: datetime, clock_status: int = 0x00) -> bytes:
    """A DLMS date-time octet string (12 bytes), UTC, deviation 0, clock status OK (or ``clock_status``)."""
    v = value.astimezone(UTC)
    return (
        v.year.to_bytes(2, "big")
        + bytes([v.month, v.day, v.isoweekday(), v.hour, v.minute, v.second, 0])
        + (0).to_bytes(2, "big", signed=True)
        + bytes([clock_status])
    )


def ecs80_content(
    alert_code: int,
    counter: int,
    stamp: datetime,
    interruption: datetime,
    restoration: datetime,
    *,
    interruption_clock_status: int = 0x00,
    restoration_clock_status: int = 0x00,
) -> bytes:
    """DLMS Data-Notification of an ECS80 Supply Outage Restored alert (the time stamp's clock status is
    the restoration's: the alert is raised when the supply returns)."""
    invoke_id = (0x20 << 24 | (counter & 0xFFFFFF)).to_bytes(4, "big")
    return (
        b"\x0f"
        + invoke_id
        + b"\x00\x02\x04\x12"
        + alert_code.to_bytes(2, "big")
        + b"\x09\x0c"
        + dlms_datetime(stamp, restoration_clock_status)
        + b"\x09\x0c"
        + dlms_datetime(interruption, interruption_clock_status)
        + b"\x09\x0c"
        + dlms_datetime(restoration, restoration_clock_status)
    )


# ------------------------------------------------------------------ the factory


class MessageFactory:
    """Builds signed DUIS messages. ``device_key(eui)`` gives a device's DS private key (GBCS signing)."""

    def __init__(
        self,
        *,
        dsp: Signer,
        supplier: Signer | None,
        device_key: Callable[[int], ec.EllipticCurvePrivateKey | None],
        dcc_eui: int = DCC_EUI,
        supplier_eui: int = SUPPLIER_EUI,
        dno_eui: int = DNO_EUI,
        image_hash: bytes = bytes.fromhex("AA758690730934FF0685AA758690730934FF0685657788990011223344556677"),
    ) -> None:
        self.dsp = dsp
        self.supplier = supplier
        self.device_key = device_key
        self.dcc_eui = dcc_eui
        self.supplier_eui = supplier_eui
        self.dno_eui = dno_eui
        self.image_hash = image_hash
        self._alert_counter = 0x100000

    # -- helpers

    def _next_alert_counter(self) -> int:
        self._alert_counter += 1
        return self._alert_counter

    def _device_signed(self, eui: int, frame: bytes) -> bytes:
        key = self.device_key(eui)
        if key is None:
            return frame[:-1] + b"\x00" if frame.endswith(b"\x00") else frame
        return sign_frame(frame, key)

    def _dsp_signed(self, doc: Response, signer: Signer | None = None) -> bytes:
        s = signer or self.dsp
        return sign(encode(doc), s.key, s.certificate)

    # -- observation lane: the supplier's 11.3 request and what comes back to it

    def activate_request(
        self,
        esme: int,
        counter: int,
        *,
        execution: datetime | None = None,
        cancellation: bool = False,
        signed_pre_command: bool = False,
        signer: Signer | None = None,
    ) -> bytes:
        """SR 11.3 Activate Firmware request: CV4 (``ActivateFirmware``) or CV5 (``SignedPreCommand``)."""
        when = datetime(3000, 12, 31, tzinfo=UTC) if cancellation else execution
        rid = MessageId(self.supplier_eui, esme, counter)
        if signed_pre_command:
            gbcs_exec = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) if cancellation else execution
            content = cs06_command_content(self.image_hash, counter, gbcs_exec)
            frame = build_general_signing(
                cra=1,
                originator_counter=counter,
                originator=self.supplier_eui,
                recipient=esme,
                message_code=MSG_CS06,
                content=content,
            )
            key = self.device_key(self.supplier_eui)
            payload = sign_frame(frame, key) if key is not None else frame
            header = RequestHeader(rid, 5, "11.3", "11.3")
            doc = Request(header, SignedPreCommand(payload, when))
        else:
            doc = Request(RequestHeader(rid, 4, "11.3", "11.3"), ActivateFirmware(self.image_hash, when))
        s = signer or self.supplier
        if s is None:
            return encode(doc)
        return sign(encode(doc), s.key, s.certificate)

    def activate_response(
        self,
        esme: int,
        counter: int,
        response_time: datetime,
        *,
        result: int | None = 0,
        firmware_version: bytes = b"\x01\x23\xab\xce",
        gbcs_time: datetime | None = None,
        gbcs_counter: int | None = None,
        gbcs_originator: int | None = None,
        gbcs_recipient: int | None = None,
        signer: Signer | None = None,
    ) -> bytes:
        """The ESME's 11.3 response (CS06 result, or NULL = accepted for a future date) to the supplier.
        ``gbcs_counter`` / ``gbcs_originator`` / ``gbcs_recipient`` put other values than the RequestID's
        into the device-signed GBCS header (identity-mismatch tests)."""
        frame = build_general_signing(
            cra=2,
            originator_counter=counter if gbcs_counter is None else gbcs_counter,
            originator=esme if gbcs_originator is None else gbcs_originator,
            recipient=self.supplier_eui if gbcs_recipient is None else gbcs_recipient,
            message_code=MSG_CS06,
            content=cs06_response_content(result, firmware_version),
            date_time=dlms_datetime(gbcs_time) if gbcs_time is not None else None,
        )
        payload = self._device_signed(esme if gbcs_originator is None else gbcs_originator, frame)
        header = ResponseHeader(
            "I0",
            response_time,
            request_id=MessageId(self.supplier_eui, esme, counter),
            response_id=MessageId(esme, self.supplier_eui, counter),
        )
        return self._dsp_signed(Response(header, ResponseMessage("11.3", "11.3", payload)), signer)

    def future_dated_outcome(
        self,
        esme: int,
        command_counter: int,
        execution: datetime,
        response_time: datetime,
        *,
        success: bool = True,
        result: int | None = None,
        firmware_version: bytes = b"\x01\x23\xab\xcf",
        signer: Signer | None = None,
        raw_gbcs: bytes | None = None,
    ) -> bytes:
        """An 8F66 (success) / 8F67 (failure) Future Dated Firmware Activation Alert, as DUIS delivers it:
        ``ResponseMessage/FutureDatedDeviceAlertMessage`` on the original request."""
        code = 0x8F66 if success else 0x8F67
        if raw_gbcs is None:
            alert_counter = self._next_alert_counter()
            outcome = (0 if success else 3) if result is None else result
            frame = build_general_signing(
                cra=3,
                originator_counter=alert_counter,
                originator=esme,
                recipient=self.supplier_eui,
                message_code=MSG_FD_FIRMWARE_ALERT,
                content=cs06_alert_content(code, execution, command_counter, outcome, firmware_version),
            )
            raw_gbcs = self._device_signed(esme, frame)
        header = ResponseHeader(
            "I0",
            response_time,
            request_id=MessageId(self.supplier_eui, esme, command_counter),
            response_id=MessageId(esme, self.supplier_eui, command_counter),
        )
        payload = FutureDatedDeviceAlertMessage(code.to_bytes(2, "big"), raw_gbcs, 1, 1)
        return self._dsp_signed(Response(header, ResponseMessage("11.3", "11.3", payload)), signer)

    def inventory_response(
        self,
        response_time: datetime,
        counter: int,
        devices: list[tuple[int, str, str | None, str, str]],
        *,
        signer: Signer | None = None,
    ) -> bytes:
        """An 8.2 Read Inventory response: devices as (eui, type, import MPxN, manufacturer, model)."""
        inv = DSPInventory(
            tuple(
                InventoryDevice(
                    device_id=eui,
                    device_type=dtype,
                    device_manufacturer=manufacturer,
                    device_model=model,
                    device_status="Commissioned",
                    import_mpxn=mpxn if dtype == "ESME" else None,
                )
                for eui, dtype, mpxn, manufacturer, model in devices
            )
        )
        header = ResponseHeader(
            "I0", response_time, request_id=MessageId(self.dno_eui, self.dcc_eui, counter)
        )
        return self._dsp_signed(Response(header, ResponseMessage("8.2", "8.2", inv)), signer)

    # -- inline lane: what the DNO receives

    def ad1(
        self,
        ch: int,
        mpan: str,
        start: datetime,
        response_time: datetime,
        counter: int,
        *,
        signer: Signer | None = None,
    ) -> bytes:
        """DCC alert AD1 Power Outage Event for a Comms Hub and MPAN."""
        header = ResponseHeader(
            "I0", response_time, response_id=MessageId(self.dcc_eui, self.dno_eui, counter)
        )
        body = DCCAlertMessage("AD1", PowerOutageEvent(ch, start, mpan))
        return self._dsp_signed(Response(header, body), signer)

    def restoration(
        self,
        esme: int,
        interruption: datetime,
        restoration: datetime,
        response_time: datetime,
        *,
        alert_code: int = 0x8F36,
        signer: Signer | None = None,
        interruption_clock_status: int = 0x00,
        restoration_clock_status: int = 0x00,
    ) -> bytes:
        """ECS80 Supply Outage Restored device alert (8F35–8F3C) from the ESME to the network operator;
        the ``*_clock_status`` octets are the DLMS clock status of its date-times (0x00: clock OK)."""
        alert_counter = self._next_alert_counter()
        content = ecs80_content(
            alert_code,
            alert_counter,
            restoration,
            interruption,
            restoration,
            interruption_clock_status=interruption_clock_status,
            restoration_clock_status=restoration_clock_status,
        )
        frame = build_general_signing(
            cra=3,
            originator_counter=alert_counter,
            originator=esme,
            recipient=self.dno_eui,
            message_code=MSG_ECS80,
            content=content,
        )
        payload = self._device_signed(esme, frame)
        header = ResponseHeader("I0", response_time, response_id=MessageId(esme, self.dno_eui, alert_counter))
        body = DeviceAlertMessage(alert_code.to_bytes(2, "big"), payload)
        return self._dsp_signed(Response(header, body), signer)
