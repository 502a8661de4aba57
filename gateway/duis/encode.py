"""DUIS encoder: typed model in, DUIS bytes out (plus builders for tools and tests).

Theory of operation: :func:`encode` writes the model with lxml element by element in schema
order, every element in the ``sr`` namespace under the ``sr`` prefix, and serialises compactly
(no pretty-printing, UTF-8, XML declaration). The output is a pure function of the model, so the
same model always gives the same bytes; it is valid against the official DUIS 5.4 XSD whenever
the model's values are (e.g. ResponseCode in the XSD enumeration). No signature is written: the
XML-signature module appends ``ds:Signature`` as the last child of the root.

:class:`RawBody` elements are re-inserted from their exclusive-C14N bytes (parsed with the same
safe parser as untrusted input). Naive date-times are refused (:class:`UnencodableModel`).

The ``build_*`` helpers assemble complete messages the gateway meets (AD1, 11.3 responses and
future-dated outcome alerts, 8.2 inventory responses, device alerts, device status change alerts,
11.3 requests); they return models, pass them to :func:`encode` for bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from lxml import etree

from gateway.duis.errors import UnencodableModel
from gateway.duis.model import (
    ActivateFirmware,
    CommandFailure,
    CommsHubAlert,
    CommsHubFirmwareActivation,
    CSPFirmwareDeliveryStatus,
    DCCAlertBody,
    DCCAlertMessage,
    DeviceAlertMessage,
    DeviceStatusChangeEvent,
    DSPInventory,
    FirmwareDistributionFailure,
    FirmwareUpgradeRequested,
    FirmwareVersionMismatch,
    FutureDatedDeviceAlertMessage,
    InventoryDevice,
    MeterMPxNs,
    PowerOutageEvent,
    PPMIDAlert,
    PreCommand,
    PropertyFilter,
    RawBody,
    ReadInventory,
    Request,
    RequestHeader,
    Response,
    ResponseHeader,
    ResponseMessage,
    SignedPreCommand,
    SMETS1CHFirmwareNotification,
    UpdateFirmware,
)
from gateway.duis.safexml import parse_xml
from gateway.duis.values import (
    SR_NS,
    MessageId,
    format_base64,
    format_date,
    format_datetime,
    format_eui_list,
    format_hex,
)
from gbcs.eui import format_eui

__all__ = [
    "build_11_3_request",
    "build_11_3_response",
    "build_ad1_alert",
    "build_device_alert",
    "build_device_status_change_alert",
    "build_future_dated_alert_response",
    "build_inventory_response",
    "encode",
]

_P = "{" + SR_NS + "}"
_NSMAP = {"sr": SR_NS}


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    el = etree.SubElement(parent, _P + name)
    if text is not None:
        el.text = text
    return el


def _opt(parent: etree._Element, name: str, text: str | None) -> None:
    if text is not None:
        _sub(parent, name, text)


def _dt(value: datetime, where: str) -> str:
    try:
        return format_datetime(value, where)
    except ValueError as exc:
        raise UnencodableModel(str(exc)) from None


def _raw(parent: etree._Element, raw: RawBody) -> None:
    el = parse_xml(raw.xml, max_bytes=max(len(raw.xml), 1))
    if el.tag != _P + raw.name:
        raise UnencodableModel(f"RawBody {raw.name!r} holds element {el.tag!r}")
    parent.append(el)


def encode(doc: Request | Response) -> bytes:
    """Serialise a model to DUIS bytes (deterministic, compact, ``sr`` prefix, no signature)."""
    if isinstance(doc, Request):
        root = etree.Element(_P + "Request", nsmap=_NSMAP)
        _set_version(root, doc.schema_version)
        _request_header(_sub(root, "Header"), doc.header)
        _request_body(_sub(root, "Body"), doc)
    elif isinstance(doc, Response):
        root = etree.Element(_P + "Response", nsmap=_NSMAP)
        _set_version(root, doc.schema_version)
        _response_header(_sub(root, "Header"), doc.header)
        _response_body(_sub(root, "Body"), doc)
    else:
        raise UnencodableModel(f"cannot encode {type(doc).__name__}")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _set_version(root: etree._Element, version: Decimal) -> None:
    if not version.is_finite():
        raise UnencodableModel(f"schemaVersion {version} is not a finite decimal")
    root.set("schemaVersion", format(version, "f"))


# --------------------------------------------------------------------------- requests


def _request_header(h: etree._Element, header: RequestHeader) -> None:
    _sub(h, "RequestID", str(header.request_id))
    if header.first_in_sequence is not None:
        _sub(h, "FirstInSequence", "true" if header.first_in_sequence else "false")
    if header.preceding_request_id is not None:
        _sub(h, "PrecedingServiceRequestID", str(header.preceding_request_id))
    _sub(h, "CommandVariant", str(header.command_variant))
    _sub(h, "ServiceReference", header.service_reference)
    _sub(h, "ServiceReferenceVariant", header.service_reference_variant)


def _request_body(b: etree._Element, doc: Request) -> None:
    body = doc.body
    if isinstance(body, RawBody):
        _raw(b, body)
    elif isinstance(body, ActivateFirmware):
        el = _sub(b, "ActivateFirmware")
        if body.execution_datetime is not None:
            _sub(el, "ExecutionDateTime", _dt(body.execution_datetime, "ExecutionDateTime"))
        _sub(el, "FirmwareHash", format_hex(body.firmware_hash))
    elif isinstance(body, SignedPreCommand):
        el = _sub(b, "SignedPreCommand")
        if body.execution_datetime is not None:
            _sub(el, "ExecutionDateTime", _dt(body.execution_datetime, "ExecutionDateTime"))
        _sub(el, "GBCSPayload", format_base64(body.gbcs_payload))
    elif isinstance(body, ReadInventory):
        el = _sub(b, "ReadInventory")
        if body.uprn is not None:
            _sub(el, "UPRN", str(body.uprn))
        elif body.device_id is not None:
            _sub(el, "DeviceID", format_eui(body.device_id))
        elif body.mpxn is not None:
            _sub(el, "MPxN", body.mpxn)
        elif body.property_filter is not None:
            _property_filter(el, body.property_filter)
    elif isinstance(body, UpdateFirmware):
        el = _sub(b, "UpdateFirmware")
        _sub(el, "FirmwareImage", format_base64(body.firmware_image))
        _sub(el, "FirmwareVersion", body.firmware_version)
        _sub(el, "DeviceIDList", format_eui_list(body.device_ids))
    else:  # pragma: no cover - the type alias is closed
        raise UnencodableModel(f"unknown request body {type(body).__name__}")


def _property_filter(parent: etree._Element, pf: PropertyFilter) -> None:
    el = _sub(parent, "PropertyFilter")
    _sub(el, "PostCode", pf.post_code)
    _sub(el, "AddressIdentifier", pf.address_identifier)


# --------------------------------------------------------------------------- responses


def _response_header(h: etree._Element, header: ResponseHeader) -> None:
    if header.request_id is not None:
        _sub(h, "RequestID", str(header.request_id))
    if header.response_id is not None:
        _sub(h, "ResponseID", str(header.response_id))
    _sub(h, "ResponseCode", header.response_code)
    _sub(h, "ResponseDateTime", _dt(header.response_datetime, "ResponseDateTime"))


def _response_body(b: etree._Element, doc: Response) -> None:
    body = doc.body
    if isinstance(body, RawBody):
        _raw(b, body)
    elif isinstance(body, ResponseMessage):
        _response_message(_sub(b, "ResponseMessage"), body)
    elif isinstance(body, DCCAlertMessage):
        el = _sub(b, "DCCAlertMessage")
        _sub(el, "DCCAlertCode", body.dcc_alert_code)
        _throttled(el, body.throttled_alert_sequence_id, body.throttled_alert_count)
        _dcc_alert(_sub(el, "DCCAlert"), body.alert)
    elif isinstance(body, DeviceAlertMessage):
        el = _sub(b, "DeviceAlertMessage")
        _sub(el, "AlertCode", format_hex(body.alert_code))
        _throttled(el, body.throttled_alert_sequence_id, body.throttled_alert_count)
        _sub(el, "GBCSPayload", format_base64(body.gbcs_payload))
    else:  # pragma: no cover
        raise UnencodableModel(f"unknown response body {type(body).__name__}")


def _throttled(el: etree._Element, seq_id: int | None, count: int | None) -> None:
    if seq_id is not None:
        _sub(el, "ThrottledAlertSequenceId", str(seq_id))
    if count is not None:
        _sub(el, "ThrottledAlertCount", str(count))


def _response_message(el: etree._Element, rm: ResponseMessage) -> None:
    _sub(el, "ServiceReference", rm.service_reference)
    _sub(el, "ServiceReferenceVariant", rm.service_reference_variant)
    p = rm.payload
    if p is None:
        return
    if isinstance(p, bytes):
        _sub(el, "GBCSPayload", format_base64(p))
    elif isinstance(p, RawBody):
        _raw(el, p)
    elif isinstance(p, FutureDatedDeviceAlertMessage):
        f = _sub(el, "FutureDatedDeviceAlertMessage")
        _sub(f, "FutureDatedAlertCode", format_hex(p.alert_code))
        _sub(f, "GBCSPayload", format_base64(p.gbcs_payload))
        _sub(f, "InstructionNumber", str(p.instruction_number))
        _sub(f, "TotalCommandInstructions", str(p.total_command_instructions))
    elif isinstance(p, PreCommand):
        f = _sub(el, "PreCommand")
        _sub(f, "GBCSVersion", p.gbcs_version)
        _sub(f, "GBCSPayload", format_base64(p.gbcs_payload))
    elif isinstance(p, DSPInventory):
        inv = _sub(el, "DSPInventory")
        for d in p.devices:
            _inventory_device(_sub(inv, "Device"), d)
    else:  # pragma: no cover
        raise UnencodableModel(f"unknown ResponseMessage payload {type(p).__name__}")


def _inventory_device(el: etree._Element, d: InventoryDevice) -> None:
    _sub(el, "DeviceID", format_eui(d.device_id))
    _sub(el, "DeviceType", d.device_type)
    _opt(el, "DeviceStatus", d.device_status)
    _sub(el, "DeviceManufacturer", d.device_manufacturer)
    _sub(el, "DeviceModel", d.device_model)
    _opt(el, "SMETSCHTSVersion", d.smets_chts_version)
    _opt(el, "DeviceFirmwareVersion", d.device_firmware_version)
    _opt(el, "DeviceFirmwareVersionStatus", d.device_firmware_version_status)
    _opt(el, "CPLStatus", d.cpl_status)
    _opt(el, "DateCommissioned", None if d.date_commissioned is None else format_date(d.date_commissioned))
    _opt(el, "ImportMPxN", d.import_mpxn)
    _opt(el, "SecondaryImportMPAN", d.secondary_import_mpan)
    _opt(el, "ExportMPAN", d.export_mpan)
    _opt(el, "ESMEVariant", d.esme_variant)
    _opt(el, "UPRN", None if d.uprn is None else str(d.uprn))
    if d.property_filter is not None:
        _property_filter(el, d.property_filter)
    _opt(el, "CSPRegion", d.csp_region)
    _opt(el, "DeviceGBCSVersion", d.device_gbcs_version)
    _opt(el, "HANVariant", d.han_variant)
    _opt(el, "S1SP", d.s1sp)
    _opt(el, "Connectivity", d.connectivity)


def _meter_mpxns(el: etree._Element, m: MeterMPxNs) -> None:
    _sub(el, "ImportMPxN", m.import_mpxn)
    _opt(el, "SecondaryImportMPAN", m.secondary_import_mpan)
    _opt(el, "ExportMPAN", m.export_mpan)


def _dcc_alert(parent: etree._Element, alert: DCCAlertBody) -> None:
    if isinstance(alert, RawBody):
        _raw(parent, alert)
        return
    writer = _DCC_WRITERS.get(type(alert))
    if writer is None:  # pragma: no cover
        raise UnencodableModel(f"unknown DCC alert {type(alert).__name__}")
    writer(_sub(parent, type(alert).__name__), alert)


def _w_power_outage(el: etree._Element, a: PowerOutageEvent) -> None:
    _sub(el, "CommsHubDeviceID", format_eui(a.comms_hub_device_id))
    _sub(el, "StartDateTime", _dt(a.start_datetime, "StartDateTime"))
    _sub(el, "MPxN", a.mpxn)


def _w_status_change(el: etree._Element, a: DeviceStatusChangeEvent) -> None:
    _sub(el, "DeviceID", format_eui(a.device_id))
    c = _sub(_sub(el, "DeviceStatusChange"), a.change)
    if a.change == "MeterIdentity":
        if a.mpxns is None:
            raise UnencodableModel("MeterIdentity needs mpxns")
        _meter_mpxns(_sub(c, "MeterMPxNs"), a.mpxns)
        _opt(c, "ESMEVariant", a.esme_variant)
    elif a.change == "MeterDecommissioningOrWithdrawal":
        if a.mpxns is None:
            raise UnencodableModel("MeterDecommissioningOrWithdrawal needs mpxns")
        _meter_mpxns(_sub(c, "MeterDecommissionOrWithdrawal"), a.mpxns)
        for d in a.associated_devices:
            ad = _sub(c, "AssociatedType1Device")
            _sub(ad, "DeviceID", format_eui(d.device_id))
            _sub(ad, "DeviceType", d.device_type)
    elif a.change == "RecoveryCompleteACBCredentials":
        for t in a.supplier_certificate_types:
            _sub(c, "SupplierCertificateType", t)
        for t in a.network_operator_certificate_types:
            _sub(c, "NetworkOperatorCertificateType", t)


def _w_command_failure(el: etree._Element, a: CommandFailure) -> None:
    _sub(el, "CommandRequestID", str(a.command_request_id))
    if a.dsp_schedule_id is not None:
        _sub(el, "DSPScheduleID", str(a.dsp_schedule_id))
    _sub(el, "DeviceID", format_eui(a.device_id))


def _w_fw_distribution_failure(el: etree._Element, a: FirmwareDistributionFailure) -> None:
    _sub(el, "UpdateFirmwareRequestID", str(a.update_firmware_request_id))
    _sub(el, "MeterIDs", format_eui_list(a.meter_ids))


def _w_csp_delivery(el: etree._Element, a: CSPFirmwareDeliveryStatus) -> None:
    _sub(el, "UpdateFirmwareRequestID", str(a.update_firmware_request_id))
    _sub(el, "CommsHubDeviceID", format_eui(a.comms_hub_device_id))
    _sub(el, "TargetDeviceID", format_eui(a.target_device_id))
    _sub(el, "FirmwareVersion", a.firmware_version)
    _sub(el, "TimeStamp", _dt(a.timestamp, "TimeStamp"))
    _sub(el, "CommsHubTransferStatus", a.comms_hub_transfer_status)


def _w_ch_alert(el: etree._Element, a: CommsHubAlert) -> None:
    _sub(el, "CommsHubDeviceID", format_eui(a.comms_hub_device_id))
    _sub(el, "AlertCode", format_hex(a.alert_code))
    if a.timestamp is not None:
        _sub(el, "TimeStamp", _dt(a.timestamp, "TimeStamp"))
    f = a.firmware_transfer_alert
    if f is not None:
        fe = _sub(el, "FirmwareTransferAlert")
        if f.update_firmware_request_id is not None:
            _sub(fe, "UpdateFirmwareRequestID", str(f.update_firmware_request_id))
        _sub(fe, "OtherDeviceID", format_eui(f.other_device_id))
        _sub(fe, "FirmwareVersion", f.firmware_version)
        _sub(fe, "TransferResponseCode", f.transfer_response_code)


def _w_fw_mismatch(el: etree._Element, a: FirmwareVersionMismatch) -> None:
    _sub(el, "DeviceID", format_eui(a.device_id))
    _sub(el, "DeviceType", a.device_type)
    _sub(el, "FirmwareVersionSMI", a.firmware_version_smi)
    _sub(el, "FirmwareVersionDevice", a.firmware_version_device)


def _w_fw_upgrade_requested(el: etree._Element, a: FirmwareUpgradeRequested) -> None:
    _sub(el, "DeviceType", a.device_type)
    _sub(el, "FirmwareVersion", a.firmware_version)
    _sub(el, "DeviceList", format_eui_list(a.device_list))


def _w_ch_fw_activation(el: etree._Element, a: CommsHubFirmwareActivation) -> None:
    _sub(el, "DeviceID", format_eui(a.device_id))
    _sub(el, "FirmwareVersion", a.firmware_version)


def _w_smets1_ch_fw(el: etree._Element, a: SMETS1CHFirmwareNotification) -> None:
    _sub(el, "DeviceID", format_eui(a.device_id))
    _sub(el, "FirmwareVersion", a.firmware_version)
    _sub(el, "FirmwareVersionUpdateStatus", a.firmware_version_update_status)


def _w_ppmid_alert(el: etree._Element, a: PPMIDAlert) -> None:
    _sub(el, "DeviceID", format_eui(a.device_id))
    _sub(el, "DeviceAlertCode", format_hex(a.device_alert_code))
    if a.timestamp is not None:
        _sub(el, "Timestamp", _dt(a.timestamp, "Timestamp"))
    if a.firmware_upgrade is not None:
        u = _sub(el, "PPMIDFirmwareUpgradeAlert")
        _sub(u, "FirmwareVersion", a.firmware_upgrade.firmware_version)
        _sub(u, "ActivateImageResultCode", a.firmware_upgrade.activate_image_result_code)


_DCC_WRITERS: dict[type, Callable[[etree._Element, Any], None]] = {
    PowerOutageEvent: _w_power_outage,
    DeviceStatusChangeEvent: _w_status_change,
    CommandFailure: _w_command_failure,
    FirmwareDistributionFailure: _w_fw_distribution_failure,
    CSPFirmwareDeliveryStatus: _w_csp_delivery,
    CommsHubAlert: _w_ch_alert,
    FirmwareVersionMismatch: _w_fw_mismatch,
    FirmwareUpgradeRequested: _w_fw_upgrade_requested,
    CommsHubFirmwareActivation: _w_ch_fw_activation,
    SMETS1CHFirmwareNotification: _w_smets1_ch_fw,
    PPMIDAlert: _w_ppmid_alert,
}


# --------------------------------------------------------------------------- builders


def build_ad1_alert(
    *,
    comms_hub_device_id: int,
    start_datetime: datetime,
    mpxn: str,
    response_datetime: datetime,
    response_id: MessageId | None = None,
    request_id: MessageId | None = None,
    response_code: str = "I0",
    throttled_alert_sequence_id: int | None = None,
    throttled_alert_count: int | None = None,
    schema_version: Decimal = Decimal("5.4"),
) -> Response:
    """A DCC alert AD1 (Power Outage Event) as the DSP sends it to the Network Operator."""
    return Response(
        ResponseHeader(response_code, response_datetime, request_id, response_id),
        DCCAlertMessage(
            "AD1",
            PowerOutageEvent(comms_hub_device_id, start_datetime, mpxn),
            throttled_alert_sequence_id,
            throttled_alert_count,
        ),
        schema_version,
    )


def build_11_3_response(
    *,
    request_id: MessageId,
    gbcs_payload: bytes,
    response_datetime: datetime,
    response_id: MessageId | None = None,
    response_code: str = "I0",
    schema_version: Decimal = Decimal("5.4"),
) -> Response:
    """The device response to SR 11.3 (GBCS CS06 response in ``GBCSPayload``).

    Without ``response_id`` the DUIS device-response form is used: target and originator of the
    RequestID swapped, same counter.
    """
    if response_id is None:
        response_id = MessageId(request_id.target, request_id.originator, request_id.counter)
    return Response(
        ResponseHeader(response_code, response_datetime, request_id, response_id),
        ResponseMessage("11.3", "11.3", gbcs_payload),
        schema_version,
    )


def build_future_dated_alert_response(
    *,
    request_id: MessageId,
    gbcs_payload: bytes,
    response_datetime: datetime,
    success: bool = True,
    response_id: MessageId | None = None,
    instruction_number: int = 1,
    total_command_instructions: int = 1,
    response_code: str = "I0",
    service_reference_variant: str = "11.3",
    schema_version: Decimal = Decimal("5.4"),
) -> Response:
    """The outcome of a future-dated command (8F66 success / 8F67 failure) for its request."""
    srv = service_reference_variant
    sr = ".".join(srv.split(".")[:2])
    if response_id is None:
        response_id = MessageId(request_id.target, request_id.originator, request_id.counter)
    return Response(
        ResponseHeader(response_code, response_datetime, request_id, response_id),
        ResponseMessage(
            sr,
            srv,
            FutureDatedDeviceAlertMessage(
                b"\x8f\x66" if success else b"\x8f\x67",
                gbcs_payload,
                instruction_number,
                total_command_instructions,
            ),
        ),
        schema_version,
    )


def build_inventory_response(
    *,
    request_id: MessageId,
    devices: tuple[InventoryDevice, ...],
    response_datetime: datetime,
    response_code: str = "I0",
    schema_version: Decimal = Decimal("5.4"),
) -> Response:
    """The DCC-only SR 8.2 Read Inventory response (no ResponseID, as DCC Boxed sends it)."""
    return Response(
        ResponseHeader(response_code, response_datetime, request_id, None),
        ResponseMessage("8.2", "8.2", DSPInventory(devices)),
        schema_version,
    )


def build_device_alert(
    *,
    alert_code: bytes,
    gbcs_payload: bytes,
    response_datetime: datetime,
    response_id: MessageId | None = None,
    response_code: str = "I0",
    throttled_alert_sequence_id: int | None = None,
    throttled_alert_count: int | None = None,
    schema_version: Decimal = Decimal("5.4"),
) -> Response:
    """A device alert (e.g. ``b"\\x8f\\x36"`` supply restored after >= 3 minutes)."""
    return Response(
        ResponseHeader(response_code, response_datetime, None, response_id),
        DeviceAlertMessage(alert_code, gbcs_payload, throttled_alert_sequence_id, throttled_alert_count),
        schema_version,
    )


def build_device_status_change_alert(
    *,
    device_id: int,
    change: str,
    response_datetime: datetime,
    dcc_alert_code: str,
    mpxns: MeterMPxNs | None = None,
    esme_variant: str | None = None,
    response_id: MessageId | None = None,
    response_code: str = "I0",
    schema_version: Decimal = Decimal("5.4"),
) -> Response:
    """A DCC alert carrying a DeviceStatusChangeEvent (the N-code is the caller's: the XSD does
    not tie codes to alert kinds)."""
    return Response(
        ResponseHeader(response_code, response_datetime, None, response_id),
        DCCAlertMessage(dcc_alert_code, DeviceStatusChangeEvent(device_id, change, mpxns, esme_variant)),
        schema_version,
    )


def build_11_3_request(
    *,
    request_id: MessageId,
    command_variant: int = 4,
    firmware_hash: bytes | None = None,
    signed_pre_command: bytes | None = None,
    execution_datetime: datetime | None = None,
    schema_version: Decimal = Decimal("5.4"),
) -> Request:
    """An SR 11.3 Activate Firmware request: CV4 with ``firmware_hash`` (ActivateFirmware body) or
    CV5/6/7 with ``signed_pre_command`` (SignedPreCommand body); ``execution_datetime`` makes it
    future-dated (3000-12-31 cancels)."""
    header = RequestHeader(request_id, command_variant, "11.3", "11.3")
    if signed_pre_command is not None:
        return Request(header, SignedPreCommand(signed_pre_command, execution_datetime), schema_version)
    if firmware_hash is None:
        raise UnencodableModel("build_11_3_request needs firmware_hash (CV4) or signed_pre_command (CV5-7)")
    return Request(header, ActivateFirmware(firmware_hash, execution_datetime), schema_version)
