"""Typed, immutable model of the DUIS documents the gateway meets.

Theory of operation: :func:`gateway.duis.decode.decode` turns a DUIS ``sr:Request`` or
``sr:Response`` into one of the two roots here; :func:`gateway.duis.encode.encode` turns a model
back into DUIS bytes. Every class is a frozen, slotted dataclass, so a decoded message is a value:
hashable, comparable, safe to share between tasks.

Representation rules (one per lexical family, see :mod:`gateway.duis.values`):

* EUIs are ``int`` (render with ``gbcs.eui.format_eui``); the field names that hold EUIs are
  listed in :data:`EUI_FIELDS` (renderers use it).
* RequestID / ResponseID / request ids inside alerts are :class:`MessageId`.
* ``xs:dateTime`` values are aware ``datetime`` (naive input is resolved by the decode policy).
* ``xs:hexBinary`` (alert codes, FirmwareHash) and ``xs:base64Binary`` (GBCS payloads,
  firmware images) are ``bytes``.
* ``xs:string`` fields (MPxN, FirmwareVersion, ...) are ``str`` exactly as received.
* Elements the gateway does not interpret are kept as :class:`RawBody` (local name plus the
  element's exclusive-C14N bytes), so nothing is lost and re-encoding is stable.

``warnings`` holds the cross-field findings the XSD does not enforce (SR vs SRV, CV vs SRV,
DCCAlertCode vs DCCAlert child, AD1 MPxN form, naive date-times). Warnings are diagnostics, not
content: they take no part in equality or hashing (``compare=False``), so a re-encoded message
equals its source even when the source had e.g. a naive date-time that the encoder writes as UTC.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import TypeAlias

from gateway.duis.values import CANCELLATION_DATE, DateTimePolicy, MessageId, format_datetime

__all__ = [
    "EUI_FIELDS",
    "ActivateFirmware",
    "AssociatedDevice",
    "CSPFirmwareDeliveryStatus",
    "CommandFailure",
    "CommsHubAlert",
    "CommsHubFirmwareActivation",
    "DCCAlertBody",
    "DCCAlertMessage",
    "DSPInventory",
    "DateTimePolicy",
    "DeviceAlertMessage",
    "DeviceStatusChangeEvent",
    "FirmwareDistributionFailure",
    "FirmwareTransferAlert",
    "FirmwareUpgradeRequested",
    "FirmwareVersionMismatch",
    "FutureDatedDeviceAlertMessage",
    "InventoryDevice",
    "MessageId",
    "MeterMPxNs",
    "PPMIDAlert",
    "PPMIDFirmwareUpgradeAlert",
    "PowerOutageEvent",
    "PreCommand",
    "PropertyFilter",
    "RawBody",
    "ReadInventory",
    "Request",
    "RequestBody",
    "RequestHeader",
    "Response",
    "ResponseBody",
    "ResponseHeader",
    "ResponseMessage",
    "ResponsePayload",
    "SMETS1CHFirmwareNotification",
    "SignedPreCommand",
    "UpdateFirmware",
]

#: Names of model fields that hold EUI-64 ints (or tuples of them).
EUI_FIELDS: frozenset[str] = frozenset(
    {
        "device_id",
        "comms_hub_device_id",
        "target_device_id",
        "other_device_id",
        "device_ids",
        "meter_ids",
        "device_list",
    }
)


def _is_cancellation(value: datetime | None) -> bool:
    # The sentinel is compared on the date as written (its own zone), so 3000-12-31T00:00:00+01:00
    # is still the sentinel; anything later is also no real execution time.
    return value is not None and value.date() >= CANCELLATION_DATE


@dataclass(frozen=True, slots=True)
class RawBody:
    """An element the gateway keeps but does not interpret: local name + exclusive-C14N bytes."""

    name: str
    xml: bytes


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ActivateFirmware:
    """SR 11.3 body (GBCS CS06). No ``execution_datetime`` = immediate activation."""

    firmware_hash: bytes  # 32 octets (the manufacturer image hash)
    execution_datetime: datetime | None = None

    @property
    def is_cancellation(self) -> bool:
        """True for the 3000-12-31 sentinel that cancels a pending future-dated activation."""
        return _is_cancellation(self.execution_datetime)

    @property
    def is_future_dated(self) -> bool:
        return self.execution_datetime is not None and not self.is_cancellation


@dataclass(frozen=True, slots=True)
class SignedPreCommand:
    """CV 5/6/7 body: the user-signed GBCS pre-command, optionally future-dated."""

    gbcs_payload: bytes
    execution_datetime: datetime | None = None

    @property
    def is_cancellation(self) -> bool:
        return _is_cancellation(self.execution_datetime)

    @property
    def is_future_dated(self) -> bool:
        return self.execution_datetime is not None and not self.is_cancellation


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    post_code: str
    address_identifier: str


@dataclass(frozen=True, slots=True)
class ReadInventory:
    """SR 8.2 body: exactly one selector of MPxN, DeviceID, UPRN, PropertyFilter."""

    mpxn: str | None = None
    device_id: int | None = None
    uprn: int | None = None
    property_filter: PropertyFilter | None = None

    def __post_init__(self) -> None:
        chosen = sum(v is not None for v in (self.mpxn, self.device_id, self.uprn, self.property_filter))
        if chosen != 1:
            raise ValueError(f"ReadInventory needs exactly one selector, got {chosen}")


@dataclass(frozen=True, slots=True)
class UpdateFirmware:
    """SR 11.1 body (image distribution to devices)."""

    firmware_image: bytes
    firmware_version: str
    device_ids: tuple[int, ...]


RequestBody: TypeAlias = ActivateFirmware | SignedPreCommand | ReadInventory | UpdateFirmware | RawBody


@dataclass(frozen=True, slots=True)
class RequestHeader:
    request_id: MessageId
    command_variant: int
    service_reference: str
    service_reference_variant: str
    first_in_sequence: bool | None = None
    preceding_request_id: MessageId | None = None


@dataclass(frozen=True, slots=True)
class Request:
    header: RequestHeader
    body: RequestBody
    schema_version: Decimal = Decimal("5.4")
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def body_kind(self) -> str:
        return self.body.name if isinstance(self.body, RawBody) else type(self.body).__name__

    @property
    def identity(self) -> str:
        """Stable idempotency key: the RequestID plus the CommandVariant (CV4 and CV5 share a RequestID)."""
        return f"{self.header.request_id}|CV{self.header.command_variant}"


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class FutureDatedDeviceAlertMessage:
    """The outcome of a future-dated command (8F66 success / 8F67 failure), delivered as a response."""

    alert_code: bytes  # 2 octets, b"\x8f\x66" or b"\x8f\x67"
    gbcs_payload: bytes
    instruction_number: int
    total_command_instructions: int


@dataclass(frozen=True, slots=True)
class InventoryDevice:
    """One ``sr:Device`` of a ``DSPInventory`` (SR 8.2 response)."""

    device_id: int
    device_type: str  # ESME, GSME, GPF, CHF, HCALCS, PPMID, IHD, CAD
    device_manufacturer: str
    device_model: str
    device_status: str | None = None
    smets_chts_version: str | None = None
    device_firmware_version: str | None = None
    device_firmware_version_status: str | None = None
    cpl_status: str | None = None
    date_commissioned: date | None = None
    import_mpxn: str | None = None
    secondary_import_mpan: str | None = None
    export_mpan: str | None = None
    esme_variant: str | None = None
    uprn: int | None = None
    property_filter: PropertyFilter | None = None
    csp_region: str | None = None
    device_gbcs_version: str | None = None
    han_variant: str | None = None
    s1sp: str | None = None
    connectivity: str | None = None


@dataclass(frozen=True, slots=True)
class DSPInventory:
    devices: tuple[InventoryDevice, ...]


@dataclass(frozen=True, slots=True)
class PreCommand:
    """CV4 synchronous response: the unsigned GBCS pre-command to be signed by the user."""

    gbcs_version: str
    gbcs_payload: bytes


#: ``bytes`` is a bare ``sr:GBCSPayload``; other payload kinds the gateway does not use are RawBody.
ResponsePayload: TypeAlias = bytes | FutureDatedDeviceAlertMessage | DSPInventory | PreCommand | RawBody


@dataclass(frozen=True, slots=True)
class ResponseMessage:
    service_reference: str
    service_reference_variant: str
    payload: ResponsePayload | None = None

    @property
    def payload_kind(self) -> str | None:
        p = self.payload
        if p is None:
            return None
        if isinstance(p, bytes):
            return "GBCSPayload"
        if isinstance(p, RawBody):
            return p.name
        return type(p).__name__

    @property
    def gbcs_payload(self) -> bytes | None:
        """The GBCS bytes carried directly, in a FutureDatedDeviceAlertMessage or a PreCommand."""
        p = self.payload
        if isinstance(p, bytes):
            return p
        if isinstance(p, FutureDatedDeviceAlertMessage | PreCommand):
            return p.gbcs_payload
        return None


@dataclass(frozen=True, slots=True)
class DeviceAlertMessage:
    alert_code: bytes  # e.g. b"\x8f\x36" (restoration after >= 3 minutes)
    gbcs_payload: bytes
    throttled_alert_sequence_id: int | None = None
    throttled_alert_count: int | None = None


@dataclass(frozen=True, slots=True)
class PowerOutageEvent:
    """The AD1 child: the Comms Hub that lost power, when, and the MPAN it serves."""

    comms_hub_device_id: int
    start_datetime: datetime
    mpxn: str


@dataclass(frozen=True, slots=True)
class MeterMPxNs:
    import_mpxn: str
    secondary_import_mpan: str | None = None
    export_mpan: str | None = None


@dataclass(frozen=True, slots=True)
class AssociatedDevice:
    device_id: int
    device_type: str


@dataclass(frozen=True, slots=True)
class DeviceStatusChangeEvent:
    """``DeviceStatusChangeEvent``: the device and which ``DeviceStatusChange`` choice occurred.

    ``change`` is the choice's element name (MeterIdentity, MeterDecommissioningOrWithdrawal,
    DeviceRemovedFromInventory, CHFDecommissioning, DeviceSuspended, DeviceRestored,
    RecoveryCompleteACBCredentials, RecoveryComplete); the fields it carries are filled in.
    """

    device_id: int
    change: str
    mpxns: MeterMPxNs | None = None
    esme_variant: str | None = None
    associated_devices: tuple[AssociatedDevice, ...] = ()
    supplier_certificate_types: tuple[str, ...] = ()
    network_operator_certificate_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CommandFailure:
    command_request_id: MessageId
    device_id: int
    dsp_schedule_id: int | None = None


@dataclass(frozen=True, slots=True)
class FirmwareDistributionFailure:
    update_firmware_request_id: MessageId
    meter_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CSPFirmwareDeliveryStatus:
    update_firmware_request_id: MessageId
    comms_hub_device_id: int
    target_device_id: int
    firmware_version: str
    timestamp: datetime
    comms_hub_transfer_status: str  # Success | Failure


@dataclass(frozen=True, slots=True)
class FirmwareTransferAlert:
    other_device_id: int
    firmware_version: str
    transfer_response_code: str
    update_firmware_request_id: MessageId | None = None


@dataclass(frozen=True, slots=True)
class CommsHubAlert:
    comms_hub_device_id: int
    alert_code: bytes
    timestamp: datetime | None = None
    firmware_transfer_alert: FirmwareTransferAlert | None = None


@dataclass(frozen=True, slots=True)
class FirmwareVersionMismatch:
    device_id: int
    device_type: str
    firmware_version_smi: str
    firmware_version_device: str


@dataclass(frozen=True, slots=True)
class FirmwareUpgradeRequested:
    device_type: str
    firmware_version: str
    device_list: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CommsHubFirmwareActivation:
    device_id: int
    firmware_version: str


@dataclass(frozen=True, slots=True)
class SMETS1CHFirmwareNotification:
    device_id: int
    firmware_version: str
    firmware_version_update_status: str  # UpdateRequested | ActivationSuccessful


@dataclass(frozen=True, slots=True)
class PPMIDFirmwareUpgradeAlert:
    firmware_version: str
    activate_image_result_code: str  # ActivationSuccess | ActivationFailure


@dataclass(frozen=True, slots=True)
class PPMIDAlert:
    device_id: int
    device_alert_code: bytes
    timestamp: datetime | None = None
    firmware_upgrade: PPMIDFirmwareUpgradeAlert | None = None


DCCAlertBody: TypeAlias = (
    PowerOutageEvent
    | DeviceStatusChangeEvent
    | CommandFailure
    | FirmwareDistributionFailure
    | CSPFirmwareDeliveryStatus
    | CommsHubAlert
    | FirmwareVersionMismatch
    | FirmwareUpgradeRequested
    | CommsHubFirmwareActivation
    | SMETS1CHFirmwareNotification
    | PPMIDAlert
    | RawBody
)


@dataclass(frozen=True, slots=True)
class DCCAlertMessage:
    dcc_alert_code: str  # AD1, N1..N65, N999
    alert: DCCAlertBody
    throttled_alert_sequence_id: int | None = None
    throttled_alert_count: int | None = None

    @property
    def alert_kind(self) -> str:
        return self.alert.name if isinstance(self.alert, RawBody) else type(self.alert).__name__


#: ``SMETS1ResponseMessage`` is kept raw (``RawBody`` named "SMETS1ResponseMessage").
ResponseBody: TypeAlias = ResponseMessage | DeviceAlertMessage | DCCAlertMessage | RawBody


@dataclass(frozen=True, slots=True)
class ResponseHeader:
    response_code: str
    response_datetime: datetime
    request_id: MessageId | None = None
    response_id: MessageId | None = None


@dataclass(frozen=True, slots=True)
class Response:
    header: ResponseHeader
    body: ResponseBody
    schema_version: Decimal = Decimal("5.4")
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def body_kind(self) -> str:
        """ResponseMessage, DeviceAlertMessage, DCCAlertMessage or SMETS1ResponseMessage."""
        return self.body.name if isinstance(self.body, RawBody) else type(self.body).__name__

    @property
    def kind(self) -> str:
        """Body kind refined by what it carries, e.g. ``ResponseMessage.GBCSPayload``,
        ``ResponseMessage.FutureDatedDeviceAlertMessage#1``, ``DCCAlertMessage.AD1``,
        ``DeviceAlertMessage.8F36``."""
        b = self.body
        if isinstance(b, ResponseMessage):
            p = b.payload
            sub = b.payload_kind or "Ack"
            if isinstance(p, FutureDatedDeviceAlertMessage):
                sub += f"#{p.instruction_number}"
            return f"ResponseMessage.{sub}"
        if isinstance(b, DCCAlertMessage):
            return f"DCCAlertMessage.{b.dcc_alert_code}"
        if isinstance(b, DeviceAlertMessage):
            return f"DeviceAlertMessage.{b.alert_code.hex().upper()}"
        return self.body_kind

    @property
    def identity(self) -> str:
        """Stable message identity for idempotent decisions (the same message delivered twice).

        * With a ResponseID: ``ResponseID|kind``. The kind is part of the key because a device
          response and the later future-dated outcome (8F66/8F67) for the same request may share
          the swapped-ids/same-counter ResponseID form; they must not collapse into one message.
        * Without one (DCC-only responses, acknowledgements, possibly alerts):
          ``RequestID-or-'-'|ResponseCode|kind|ResponseDateTime|body-digest``; the digest
          (SHA-256 of the body's value, 16 hex digits) keeps two ID-less alerts of the same
          second (e.g. AD1s of different Comms Hubs in a storm) apart.
        Re-delivery of the same message (same bytes or same content) gives the same identity.
        """
        h = self.header
        if h.response_id is not None:
            return f"{h.response_id}|{self.kind}"
        digest = hashlib.sha256(repr(self.body).encode()).hexdigest()[:16]
        rid = str(h.request_id) if h.request_id is not None else "-"
        when = format_datetime(h.response_datetime)
        return f"{rid}|{h.response_code}|{self.kind}|{when}|{digest}"
