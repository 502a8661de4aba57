"""Hypothesis strategies for DUIS models whose values are valid against DUIS 5.4 (so every
generated message must also pass the official XSD after encoding)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import strategies as st

from gateway.duis.model import (
    ActivateFirmware,
    AssociatedDevice,
    CommandFailure,
    CommsHubAlert,
    CommsHubFirmwareActivation,
    CSPFirmwareDeliveryStatus,
    DCCAlertMessage,
    DeviceAlertMessage,
    DeviceStatusChangeEvent,
    DSPInventory,
    FirmwareDistributionFailure,
    FirmwareTransferAlert,
    FirmwareUpgradeRequested,
    FirmwareVersionMismatch,
    FutureDatedDeviceAlertMessage,
    InventoryDevice,
    MeterMPxNs,
    PowerOutageEvent,
    PPMIDAlert,
    PPMIDFirmwareUpgradeAlert,
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
from gateway.duis.values import SRV_COMMAND_VARIANTS, MessageId

SR = "http://www.dccinterface.co.uk/ServiceUserGateway"

euis = st.integers(0, (1 << 64) - 1)
counters = st.integers(0, (1 << 64) - 1)
message_ids = st.builds(MessageId, euis, euis, counters)
_alnum = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="<>&")
firmware_versions = st.text(_alnum, min_size=1, max_size=8)
mpxns = st.text(st.sampled_from("0123456789"), min_size=1, max_size=13)
mpans = st.text(st.sampled_from("0123456789"), min_size=13, max_size=13)
short_text = st.text(_alnum, min_size=1, max_size=20)
device_types = st.sampled_from(["ESME", "GSME", "GPF", "CHF", "HCALCS", "PPMID", "IHD", "CAD"])
device_status = st.sampled_from(["Pending", "InstalledNotCommissioned", "Commissioned", "Decommissioned"])
response_codes = st.sampled_from(["I0", "I99", "E1", "E20", "E21", "E30", "E65", "W110101", "E110101"])
dcc_codes = st.sampled_from(["N1", "N12", "N24", "N31", "N33", "N65", "N999"])
zones = st.sampled_from([UTC, timezone(timedelta(hours=1)), timezone(timedelta(hours=-5, minutes=-30))])
datetimes = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(3000, 12, 31, 23, 59, 59)),
    zones,
)
uint32 = st.integers(0, 0xFFFFFFFF)
uint16 = st.integers(0, 0xFFFF)
payloads = st.binary(min_size=1, max_size=120)
alert_codes = st.binary(min_size=2, max_size=2)
srvs = st.sampled_from(sorted(SRV_COMMAND_VARIANTS))
versions = st.sampled_from([Decimal("5.0"), Decimal("5.1"), Decimal("5.3"), Decimal("5.4")])


def _sr(srv: str) -> str:
    return ".".join(srv.split(".")[:2])


property_filters = st.builds(
    PropertyFilter, st.text(_alnum, min_size=6, max_size=8), st.text(_alnum, min_size=0, max_size=30)
)
read_inventory = st.one_of(
    st.builds(ReadInventory, mpxn=mpxns),
    st.builds(ReadInventory, device_id=euis),
    st.builds(ReadInventory, uprn=st.integers(1, 999_999_999_999)),
    st.builds(ReadInventory, property_filter=property_filters),
)
request_bodies_with_srv = st.one_of(
    st.tuples(
        st.builds(ActivateFirmware, st.binary(min_size=32, max_size=32), st.none() | datetimes),
        st.just("11.3"),
        st.sampled_from([4]),
    ),
    st.tuples(
        st.builds(SignedPreCommand, payloads, st.none() | datetimes),
        st.just("11.3"),
        st.sampled_from([5, 6, 7]),
    ),
    st.tuples(read_inventory, st.just("8.2"), st.just(8)),
    st.tuples(
        st.builds(
            UpdateFirmware,
            st.binary(min_size=1, max_size=200),
            firmware_versions,
            st.lists(euis, min_size=1, max_size=4).map(tuple),
        ),
        st.just("11.1"),
        st.just(8),
    ),
    st.tuples(
        st.just(
            RawBody(
                "ReadInstantaneousImportRegisters",
                f'<sr:ReadInstantaneousImportRegisters xmlns:sr="{SR}"></sr:ReadInstantaneousImportRegisters>'.encode(),
            )
        ),
        st.just("4.1.1"),
        st.sampled_from([1, 2, 3]),
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    body, srv, cv = draw(request_bodies_with_srv)
    header = RequestHeader(
        draw(message_ids),
        cv,
        _sr(srv),
        srv,
        draw(st.none() | st.booleans()),
        draw(st.none() | message_ids),
    )
    return Request(header, body, draw(versions))


inventory_devices = st.builds(
    InventoryDevice,
    device_id=euis,
    device_type=device_types,
    device_manufacturer=st.text(_alnum, max_size=30),
    device_model=st.text(_alnum, max_size=30),
    device_status=st.none() | device_status,
    smets_chts_version=st.none() | short_text,
    device_firmware_version=st.none() | firmware_versions,
    device_firmware_version_status=st.none() | st.sampled_from(["Active", "Cancelled"]),
    cpl_status=st.none() | st.sampled_from(["Active", "Withdrawn"]),
    date_commissioned=st.none() | st.dates(),
    import_mpxn=st.none() | mpxns,
    secondary_import_mpan=st.none() | mpans,
    export_mpan=st.none() | mpans,
    esme_variant=st.none() | st.sampled_from(["A", "B", "ADF"]),
    uprn=st.none() | st.integers(1, 999_999_999_999),
    property_filter=st.none() | property_filters,
    csp_region=st.none() | st.sampled_from(["North", "4G Central", "SMETS1"]),
    device_gbcs_version=st.none() | short_text,
    han_variant=st.none() | short_text,
    s1sp=st.none() | short_text,
    connectivity=st.none() | st.sampled_from(["Cellular", "Virtual"]),
)

response_payloads = st.one_of(
    st.none(),
    payloads,
    st.builds(
        FutureDatedDeviceAlertMessage, st.sampled_from([b"\x8f\x66", b"\x8f\x67"]), payloads, uint16, uint16
    ),
    st.builds(PreCommand, short_text, payloads),
    st.builds(DSPInventory, st.lists(inventory_devices, min_size=1, max_size=3).map(tuple)),
    st.just(RawBody("DSPScheduleID", f'<sr:DSPScheduleID xmlns:sr="{SR}">42</sr:DSPScheduleID>'.encode())),
)


@st.composite
def response_messages(draw: st.DrawFn) -> ResponseMessage:
    srv = draw(srvs)
    return ResponseMessage(_sr(srv), srv, draw(response_payloads))


meter_mpxns = st.builds(MeterMPxNs, mpxns, st.none() | mpans, st.none() | mpans)
status_changes = st.one_of(
    st.builds(
        DeviceStatusChangeEvent,
        euis,
        st.just("MeterIdentity"),
        meter_mpxns,
        st.none() | st.sampled_from(["A", "B"]),
    ),
    st.builds(
        DeviceStatusChangeEvent,
        euis,
        st.just("MeterDecommissioningOrWithdrawal"),
        meter_mpxns,
        st.none(),
        st.lists(st.builds(AssociatedDevice, euis, device_types), max_size=3).map(tuple),
    ),
    st.builds(
        DeviceStatusChangeEvent,
        euis,
        st.sampled_from(
            [
                "DeviceRemovedFromInventory",
                "CHFDecommissioning",
                "DeviceSuspended",
                "DeviceRestored",
                "RecoveryComplete",
            ]
        ),
    ),
    st.builds(
        DeviceStatusChangeEvent,
        euis,
        st.just("RecoveryCompleteACBCredentials"),
        supplier_certificate_types=st.lists(
            st.sampled_from(["DigitalSigning", "KeyAgreement"]), min_size=1, max_size=3
        ).map(tuple),
        network_operator_certificate_types=st.lists(
            st.sampled_from(["DigitalSigning", "KeyAgreement"]), max_size=2
        ).map(tuple),
    ),
)
dcc_alert_bodies = st.one_of(
    status_changes,
    st.builds(CommandFailure, message_ids, euis, st.none() | st.integers(0, 10**12)),
    st.builds(FirmwareDistributionFailure, message_ids, st.lists(euis, min_size=1, max_size=3).map(tuple)),
    st.builds(
        CSPFirmwareDeliveryStatus,
        message_ids,
        euis,
        euis,
        firmware_versions,
        datetimes,
        st.sampled_from(["Success", "Failure"]),
    ),
    st.builds(
        CommsHubAlert,
        euis,
        alert_codes,
        st.none() | datetimes,
        st.none()
        | st.builds(
            FirmwareTransferAlert,
            euis,
            firmware_versions,
            st.sampled_from(
                [
                    "FileTransferSuccess",
                    "FirmwareImageDiscarded",
                    "HardwareVersionMismatch",
                    "FileTransferFailure",
                ]
            ),
            st.none() | message_ids,
        ),
    ),
    st.builds(FirmwareVersionMismatch, euis, device_types, firmware_versions, firmware_versions),
    st.builds(
        FirmwareUpgradeRequested,
        device_types,
        firmware_versions,
        st.lists(euis, min_size=1, max_size=3).map(tuple),
    ),
    st.builds(CommsHubFirmwareActivation, euis, firmware_versions),
    st.builds(
        SMETS1CHFirmwareNotification,
        euis,
        firmware_versions,
        st.sampled_from(["UpdateRequested", "ActivationSuccessful"]),
    ),
    st.builds(
        PPMIDAlert,
        euis,
        alert_codes,
        st.none() | datetimes,
        st.none()
        | st.builds(
            PPMIDFirmwareUpgradeAlert,
            firmware_versions,
            st.sampled_from(["ActivationSuccess", "ActivationFailure"]),
        ),
    ),
    st.just(
        RawBody(
            "PPMIDRemoval",
            (
                f'<sr:PPMIDRemoval xmlns:sr="{SR}"><sr:PPMIDDeviceID>00-DB-12-34-56-78-90-A3</sr:PPMIDDeviceID>'
                "<sr:CHFDeviceID>00-DB-12-34-56-78-90-A2</sr:CHFDeviceID></sr:PPMIDRemoval>"
            ).encode(),
        )
    ),
)
dcc_alert_messages = st.one_of(
    st.builds(
        DCCAlertMessage,
        st.just("AD1"),
        st.builds(PowerOutageEvent, euis, datetimes, mpans),
        st.none() | uint32,
        st.none() | uint32,
    ),
    st.builds(DCCAlertMessage, dcc_codes, dcc_alert_bodies, st.none() | uint32, st.none() | uint32),
)
device_alerts = st.builds(DeviceAlertMessage, alert_codes, payloads, st.none() | uint32, st.none() | uint32)


@st.composite
def responses(draw: st.DrawFn) -> Response:
    header = ResponseHeader(
        draw(response_codes), draw(datetimes), draw(st.none() | message_ids), draw(st.none() | message_ids)
    )
    body = draw(st.one_of(response_messages(), dcc_alert_messages, device_alerts))
    return Response(header, body, draw(versions))
