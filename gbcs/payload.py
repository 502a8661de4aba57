"""Payload decoding: the content of a General-Signing APDU, on demand.

:func:`decode_payload` picks the family from the first bytes (``01 09`` GBZ; ``D9``/``DA``/``0F``
DLMS; anything else ASN.1 DER, GBCS.md §2.4), decodes it into a generic JSON-able tree, and for the
use cases the gateway acts on also into a typed value:

=============================  =====================================  ===========================
message code                   typed value                            family
=============================  =====================================  ===========================
0x0012 CRA 1                   :class:`ActivateFirmwareCommand`       ASN.1 (CS06)
0x0012 CRA 2                   :class:`ActivateFirmwareResponse`      ASN.1 (CS06)
0x00CA                         :class:`FirmwareActivationAlert`       ASN.1 (8F66/8F67)
0x0067                         :class:`SupplyOutageRestoredAlert`     DLMS (ECS80, 8F35–8F3C)
0x00CE / 0x00CF                :class:`FirmwareReceiptAlert`          DLMS / GBZ (8F72, 8F1C)
0x00CC / 0x00CD                :class:`FutureDatedInstructionAlert`   DLMS / GBZ (8F66/8F67)
0x00F0 / 0x00F2                :class:`MeterIntegrityWarningAlert`    DLMS / GBZ (81A0)
=============================  =====================================  ===========================

Everything raised is a :class:`gbcs.errors.GbcsError`; offsets are positions in ``Frame.raw``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gbcs.asn1 import decode_der, read_tlv
from gbcs.dlms import decode_apdu, decode_data, obis_text
from gbcs.errors import BadPayload
from gbcs.frame import CRA, Frame
from gbcs.gbz import decode_gbz
from gbcs.reader import EncryptedBlock, Reader
from gbcs.timefmt import DlmsDateTime, GeneralizedTime, gbz_time

__all__ = [
    "ACTIVATE_IMAGE_RESPONSE_CODES",
    "ActivateFirmwareCommand",
    "ActivateFirmwareResponse",
    "FirmwareActivationAlert",
    "FirmwareReceiptAlert",
    "FutureDatedInstructionAlert",
    "MeterIntegrityWarningAlert",
    "Payload",
    "SupplyOutageRestoredAlert",
    "TypedPayload",
    "decode_payload",
    "decode_plaintext",
]

ACTIVATE_IMAGE_RESPONSE_CODES = {0: "Success", 1: "No Image Held", 2: "Hash Mismatch", 3: "Activation Failure"}
SUPPLY_OUTAGE_RESTORED_ALERTS = frozenset(range(0x8F35, 0x8F3D))
MSG_CS06 = 0x0012
MSG_CS06_ALERT = 0x00CA
MSG_ECS80 = 0x0067


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class ActivateFirmwareCommand:
    """CS06 command: activate an image now, at a future time, or cancel (``99991231235959Z``)."""

    image_hash: bytes
    originator_counter: int
    execution: GeneralizedTime | None

    @property
    def is_immediate(self) -> bool:
        return self.execution is None

    @property
    def is_cancellation(self) -> bool:
        return self.execution is not None and self.execution.is_cancellation

    @property
    def execution_date_time(self) -> datetime | None:
        return None if self.execution is None else self.execution.value

    def to_json(self) -> dict[str, object]:
        kind = "immediate" if self.is_immediate else "cancellation" if self.is_cancellation else "future-dated"
        out: dict[str, object] = {
            "type": "CS06 Activate Firmware command",
            "activation": kind,
            "manufacturer_image_hash": self.image_hash.hex().upper(),
            "originator_counter": self.originator_counter,
        }
        if self.execution is not None:
            out["execution_date_time"] = self.execution.to_json()
        return out


@dataclass(frozen=True, slots=True)
class ActivateFirmwareResponse:
    """CS06 response: an outcome (immediate) or ``NULL`` = command accepted (future-dated/cancellation)."""

    accepted_for_later: bool
    response_code: int | None
    firmware_version: bytes | None

    @property
    def response_name(self) -> str:
        if self.accepted_for_later:
            return "Command Accepted"
        return ACTIVATE_IMAGE_RESPONSE_CODES.get(self.response_code or 0, f"unknown ({self.response_code})")

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"type": "CS06 Activate Firmware response", "outcome": self.response_name}
        if not self.accepted_for_later:
            out["response_code"] = self.response_code
            out["firmware_version"] = (self.firmware_version or b"").hex().upper()
        return out


@dataclass(frozen=True, slots=True)
class FirmwareActivationAlert:
    """Alert 0x00CA (8F66 success / 8F67 failure) for a future-dated CS06 command."""

    alert_code: int
    execution: GeneralizedTime
    originator_counter: int  # the counter of the CS06 command this alert reports on
    response_code: int
    firmware_version: bytes

    @property
    def succeeded(self) -> bool:
        return self.alert_code == 0x8F66 and self.response_code == 0

    @property
    def response_name(self) -> str:
        return ACTIVATE_IMAGE_RESPONSE_CODES.get(self.response_code, f"unknown ({self.response_code})")

    def to_json(self) -> dict[str, object]:
        return {
            "type": "Future Dated Firmware Activation Alert",
            "alert_code": f"{self.alert_code:04X}",
            "execution_date_time": self.execution.to_json(),
            "command_originator_counter": self.originator_counter,
            "response_code": self.response_code,
            "outcome": self.response_name,
            "firmware_version": self.firmware_version.hex().upper(),
        }


@dataclass(frozen=True, slots=True)
class SupplyOutageRestoredAlert:
    """ECS80 (message code 0x0067) alerts 8F35–8F3C: supply restored after an interruption."""

    alert_code: int
    time_stamp: DlmsDateTime
    interruption: DlmsDateTime
    restoration: DlmsDateTime

    def to_json(self) -> dict[str, object]:
        return {
            "type": "Supply Outage Restored Alert",
            "alert_code": f"{self.alert_code:04X}",
            "time_stamp": self.time_stamp.to_json(),
            "interruption_date_time": self.interruption.to_json(),
            "restoration_date_time": self.restoration.to_json(),
        }


@dataclass(frozen=True, slots=True)
class FirmwareReceiptAlert:
    """Firmware distribution receipt alert (0x00CE ESME/DLMS, 0x00CF GSME/GBZ): 8F72 or 8F1C + image hash."""

    alert_code: int
    time_stamp: datetime | None
    time_stamp_text: str
    image_hash: bytes

    @property
    def verified(self) -> bool:
        return self.alert_code == 0x8F72

    def to_json(self) -> dict[str, object]:
        return {
            "type": "Firmware Distribution Receipt Alert",
            "alert_code": f"{self.alert_code:04X}",
            "time_stamp": self.time_stamp_text,
            "calculated_manufacturer_hash": self.image_hash.hex().upper(),
        }


@dataclass(frozen=True, slots=True)
class FutureDatedInstructionAlert:
    """0x00CC (DLMS) / 0x00CD (GBZ): outcome of a future-dated DLMS/GBZ instruction."""

    alert_code: int
    time_stamp_text: str
    message_code: int  # of the original command
    originator_counter: int  # of the original command
    instruction: dict[str, object]

    def to_json(self) -> dict[str, object]:
        return {
            "type": "Future Dated Execution Of Instruction Alert",
            "alert_code": f"{self.alert_code:04X}",
            "time_stamp": self.time_stamp_text,
            "command_message_code": f"{self.message_code:04X}",
            "command_originator_counter": self.originator_counter,
            "instruction": self.instruction,
        }


@dataclass(frozen=True, slots=True)
class MeterIntegrityWarningAlert:
    """0x00F0 (DLMS) / 0x00F2 (GBZ): alert 81A0 with a warning code (0x0005 = Unexpected Hardware Reset)."""

    alert_code: int
    time_stamp_text: str
    warning_code: int

    def to_json(self) -> dict[str, object]:
        return {
            "type": "Meter Integrity Issue Warning Alert",
            "alert_code": f"{self.alert_code:04X}",
            "time_stamp": self.time_stamp_text,
            "warning_code": f"{self.warning_code:04X}",
        }


TypedPayload = (
    ActivateFirmwareCommand
    | ActivateFirmwareResponse
    | FirmwareActivationAlert
    | SupplyOutageRestoredAlert
    | FirmwareReceiptAlert
    | FutureDatedInstructionAlert
    | MeterIntegrityWarningAlert
)


@dataclass(frozen=True, slots=True)
class Payload:
    family: str  # "DLMS" | "GBZ" | "ASN.1"
    tree: dict[str, object]
    typed: TypedPayload | None
    encrypted_blocks: tuple[EncryptedBlock, ...]


# ---------------------------------------------------------------- ASN.1 typed decoders


def _der_expect(r: Reader, tag: int, what: str) -> tuple[int, int]:
    at = r.pos
    t, s, e = read_tlv(r)
    if t != tag:
        raise BadPayload(f"{r.what}: {what} must have tag 0x{tag:02X}, got 0x{t:02X}", at)
    return s, e


# The INTEGERs of the typed ASN.1 payloads are counters (uint64) and codes: 9 octets hold any of them.
_DER_INT_MAX_OCTETS = 9


def _der_int(r: Reader, what: str) -> int:
    s, e = _der_expect(r, 0x02, what)
    if s == e:
        raise BadPayload(f"{r.what}: empty INTEGER {what}", s)
    if e - s > _DER_INT_MAX_OCTETS:
        raise BadPayload(f"{r.what}: INTEGER {what} of {e - s} octets (at most {_DER_INT_MAX_OCTETS})", s)
    return int.from_bytes(r.buf[s:e], "big", signed=True)


def _der_time(r: Reader, what: str) -> GeneralizedTime:
    s, e = _der_expect(r, 0x18, what)
    try:
        return GeneralizedTime.parse(r.buf[s:e])
    except ValueError as exc:
        raise BadPayload(f"{r.what}: {what}: {exc}", s) from None


def _der_seq(r: Reader, what: str) -> Reader:
    s, e = _der_expect(r, 0x30, what)
    return Reader(r.buf, s, e, r.what)


def _outcome(r: Reader) -> tuple[int, bytes]:
    seq = _der_seq(r, "ExecutionOutcome")
    code = _der_int(seq, "responseCode")
    s, e = _der_expect(seq, 0x04, "firmwareVersion")
    if e - s != 4:
        raise BadPayload(f"{r.what}: firmwareVersion must be 4 octets, got {e - s}", s)
    seq.done("ExecutionOutcome")
    return code, r.buf[s:e]


def _cs06_command(r: Reader) -> ActivateFirmwareCommand:
    seq = _der_seq(r, "ActivateFirmware command")
    s, e = _der_expect(seq, 0x04, "manufacturerImageHash")
    if e - s != 32:
        raise BadPayload(f"{r.what}: manufacturerImageHash must be 32 octets, got {e - s}", s)
    counter = _der_int(seq, "originatorCounter")
    execution = _der_time(seq, "executionDateTime") if seq.left else None
    seq.done("ActivateFirmware command")
    r.done("ActivateFirmware command")
    return ActivateFirmwareCommand(r.buf[s:e], counter, execution)


def _cs06_response(r: Reader) -> ActivateFirmwareResponse:
    if r.left >= 2 and r.buf[r.pos] == 0x05:
        _der_expect(r, 0x05, "NULL")
        r.done("ActivateFirmware response")
        return ActivateFirmwareResponse(True, None, None)
    code, version = _outcome(r)
    r.done("ActivateFirmware response")
    return ActivateFirmwareResponse(False, code, version)


def _cs06_alert(r: Reader) -> FirmwareActivationAlert:
    seq = _der_seq(r, "Future Dated Firmware Activation Alert")
    alert = _der_int(seq, "alertCode")
    execution = _der_time(seq, "executionDateTime")
    counter = _der_int(seq, "originatorCounter")
    code, version = _outcome(seq)
    seq.done("alert")
    r.done("alert")
    return FirmwareActivationAlert(alert, execution, counter, code, version)


# ---------------------------------------------------------------- DLMS/GBZ typed decoders


def _dlms_alert_items(tree: dict[str, object], what: str, at: int) -> list[dict[str, object]]:
    body = tree.get("body")
    if not isinstance(body, dict) or body.get("type") != "structure":
        raise BadPayload(f"{what}: Data-Notification body must be a structure", at)
    items = body["items"]
    assert isinstance(items, list)
    if (
        len(items) < 2
        or items[0].get("type") != "long-unsigned"
        or items[1].get("type") != "octet-string"
        or items[1].get("length") != 12
    ):
        raise BadPayload(f"{what}: alert body must start with long-unsigned alert code and 12-octet time stamp", at)
    return items


def _octets(buf: bytes, node: dict[str, object], n: int | None, what: str) -> bytes:
    if node.get("type") != "octet-string" or (n is not None and node.get("length") != n):
        raise BadPayload(f"{what} must be an octet-string" + (f" of {n} octets" if n else ""), _off(node))
    s = node["value_offset"]
    ln = node["length"]
    assert isinstance(s, int) and isinstance(ln, int)
    return buf[s : s + ln]


def _off(node: dict[str, object]) -> int | None:
    o = node.get("offset")
    return o if isinstance(o, int) else None


def _dlms_typed(frame: Frame, tree: dict[str, object]) -> TypedPayload | None:
    mc = frame.message_code
    if frame.cra != CRA.ALERT or tree.get("apdu") != "data-notification":
        return None
    if mc not in (MSG_ECS80, 0x00CE, 0x00CC, 0x00F0):
        return None
    buf = frame.raw
    at = frame.content_offset
    items = _dlms_alert_items(tree, f"message code 0x{mc:04X}", at)
    alert = items[0]["value"]
    assert isinstance(alert, int)
    ts = DlmsDateTime.from_bytes(_octets(buf, items[1], 12, "time stamp"))
    if mc == MSG_ECS80:
        if len(items) != 4:
            raise BadPayload(f"ECS80 alert body must have 4 elements, got {len(items)}", at)
        inter = DlmsDateTime.from_bytes(_octets(buf, items[2], 12, "interruption date-time"))
        rest = DlmsDateTime.from_bytes(_octets(buf, items[3], 12, "restoration date-time"))
        return SupplyOutageRestoredAlert(alert, ts, inter, rest)
    if len(items) != 3:
        raise BadPayload(f"alert body for message code 0x{mc:04X} must have 3 elements, got {len(items)}", at)
    if mc == 0x00CE:
        h = _octets(buf, items[2], 32, "calculated manufacturer hash")
        return FirmwareReceiptAlert(alert, ts.to_datetime(), ts.text(), h)
    if mc == 0x00F0:
        w = _octets(buf, items[2], 2, "warning code")
        return MeterIntegrityWarningAlert(alert, ts.text(), int.from_bytes(w, "big"))
    fd = _octets(buf, items[2], 19, "future-dated alert payload")
    instruction = {"class_id": int.from_bytes(fd[10:12], "big"), "instance": obis_text(fd[12:18]), "attribute": fd[18]}
    return FutureDatedInstructionAlert(
        alert, ts.text(), int.from_bytes(fd[0:2], "big"), int.from_bytes(fd[2:10], "big"), instruction
    )


def _gbz_typed(frame: Frame, tree: dict[str, object]) -> TypedPayload | None:
    mc = frame.message_code
    if frame.cra != CRA.ALERT or mc not in (0x00CD, 0x00CF, 0x00F2):
        return None
    alert = tree["alert_code"]
    ts = tree["time_stamp"]
    assert isinstance(alert, int) and isinstance(ts, dict)
    secs = ts["seconds_since_2000"]
    assert isinstance(secs, int)
    tail_hex = tree.pop("use_case_specific")
    assert isinstance(tail_hex, str)
    tail = bytes.fromhex(tail_hex)
    tail_at = frame.content_end - len(tail)
    text = str(ts["text"])
    if mc == 0x00CF:
        if len(tail) != 34 or tail[0] != 0x09 or tail[1] != 0x20:
            raise BadPayload("GBZ firmware receipt alert must end with 09 20 <32-byte hash>", tail_at)
        tree["calculated_manufacturer_hash"] = tail[2:].hex()
        return FirmwareReceiptAlert(alert, gbz_time(secs), text, tail[2:])
    if mc == 0x00F2:
        if len(tail) != 2:
            raise BadPayload(f"GBZ meter integrity warning must end with a 2-byte warning code, got {len(tail)}", tail_at)
        tree["warning_code"] = tail.hex()
        return MeterIntegrityWarningAlert(alert, text, int.from_bytes(tail, "big"))
    if len(tail) != 15 or tail[0] != 0x0E:
        raise BadPayload("GBZ future-dated alert must end with 0E <14-byte instruction identity>", tail_at)
    instruction: dict[str, object] = {"cluster": f"{int.from_bytes(tail[11:13], 'big'):04X}",
                                      "frame_control": tail[13], "command": tail[14]}
    tree["future_dated"] = {"message_code": tail[1:3].hex(), "originator_counter": int.from_bytes(tail[3:11], "big"),
                            **instruction}
    return FutureDatedInstructionAlert(
        alert, text, int.from_bytes(tail[1:3], "big"), int.from_bytes(tail[3:11], "big"), instruction
    )


def decode_payload(frame: Frame) -> Payload:
    """Decode ``frame``'s content. Raises :class:`gbcs.errors.GbcsError` subclasses only."""
    buf = frame.raw
    start, end = frame.content_offset, frame.content_end
    what = f"content (message code 0x{frame.message_code:04X})"
    r = Reader(buf, start, end, what)
    blocks: list[EncryptedBlock] = []
    if end - start < 1:
        raise BadPayload(f"{what}: empty content", start)
    first = buf[start]
    typed: TypedPayload | None
    if first == 0x01 and end - start >= 2 and buf[start + 1] == 0x09:
        tree = decode_gbz(r, alert=frame.cra == CRA.ALERT, blocks=blocks, message_code=frame.message_code)
        typed = _gbz_typed(frame, tree)
        return Payload("GBZ", tree, typed, tuple(blocks))
    if first in (0xD9, 0xDA, 0x0F):
        tree = decode_apdu(r, blocks)
        typed = _dlms_typed(frame, tree)
        return Payload("DLMS", tree, typed, tuple(blocks))
    mc = frame.message_code
    if mc == MSG_CS06 and frame.cra == CRA.COMMAND:
        typed = _cs06_command(Reader(buf, start, end, what))
    elif mc == MSG_CS06:
        typed = _cs06_response(Reader(buf, start, end, what))
    elif mc == MSG_CS06_ALERT:
        typed = _cs06_alert(Reader(buf, start, end, what))
    else:
        typed = None
    tree = decode_der(r)
    r.done("ASN.1 element")
    return Payload("ASN.1", tree, typed, ())


def decode_plaintext(plaintext: bytes, block: EncryptedBlock) -> dict[str, object]:
    """Decode a decrypted block: DLMS Data for DLMS, the (cluster-specific) ZCL payload as hex for GBZ."""
    if block.family == "GBZ":
        return {"zcl_payload": plaintext.hex()}
    r = Reader(plaintext, 0, len(plaintext), f"decrypted {block.where}")
    node = decode_data(r)
    r.done("decrypted DLMS data")
    return node


