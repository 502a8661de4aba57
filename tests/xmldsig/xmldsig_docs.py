"""Literal DUIS documents for the signature tests (DUIS.md §5.3 AD1, §4.1 11.3 response, 8.2
inventory response); the DUIS encoder is written separately."""

from __future__ import annotations

import base64

SR = "http://www.dccinterface.co.uk/ServiceUserGateway"


def ad1_alert(response_dt: str = "2026-01-15T09:04:12.000Z", mpxn: str = "1234567890123") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<sr:Response xmlns:sr="{SR}" schemaVersion="5.4"><sr:Header>'
        "<sr:ResponseID>90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:1768467852000</sr:ResponseID>"
        f"<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>{response_dt}</sr:ResponseDateTime>"
        "</sr:Header><sr:Body><sr:DCCAlertMessage><sr:DCCAlertCode>AD1</sr:DCCAlertCode><sr:DCCAlert>"
        "<sr:PowerOutageEvent><sr:CommsHubDeviceID>88-73-84-90-6A-10-02-DB</sr:CommsHubDeviceID>"
        f"<sr:StartDateTime>2026-01-15T09:00:05Z</sr:StartDateTime><sr:MPxN>{mpxn}</sr:MPxN>"
        "</sr:PowerOutageEvent></sr:DCCAlert></sr:DCCAlertMessage></sr:Body></sr:Response>"
    ).encode()


def activate_firmware_response(gbcs_hex: str, response_dt: str = "2026-01-15T08:59:41.500Z") -> bytes:
    payload = base64.b64encode(bytes.fromhex(gbcs_hex)).decode()
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>'
        f'<sr:Response xmlns:sr="{SR}" xmlns:ns3="http://www.w3.org/2000/09/xmldsig#" '
        'xmlns:ra="http://www.dccinterface.co.uk/ResponseAndAlert" schemaVersion="5.4"><sr:Header>'
        "<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1000</sr:RequestID>"
        "<sr:ResponseID>00-DB-12-34-56-78-90-A0:90-B3-D5-1F-30-01-00-00:1000</sr:ResponseID>"
        f"<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>{response_dt}</sr:ResponseDateTime>"
        "</sr:Header><sr:Body><sr:ResponseMessage><sr:ServiceReference>11.3</sr:ServiceReference>"
        "<sr:ServiceReferenceVariant>11.3</sr:ServiceReferenceVariant>"
        f"<sr:GBCSPayload>{payload}</sr:GBCSPayload></sr:ResponseMessage></sr:Body></sr:Response>"
    ).encode()


def inventory_response() -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>'
        f'<sr:Response xmlns:sr="{SR}" xmlns:ns3="http://www.w3.org/2000/09/xmldsig#" '
        'xmlns:ra="http://www.dccinterface.co.uk/ResponseAndAlert" schemaVersion="5.4"><sr:Header>'
        "<sr:RequestID>90-B3-D5-1F-30-02-00-00:90-B3-D5-1F-30-00-00-02:1768467000000</sr:RequestID>"
        "<sr:ResponseCode>I0</sr:ResponseCode><sr:ResponseDateTime>2026-01-15T08:50:00.000Z</sr:ResponseDateTime>"
        "</sr:Header><sr:Body><sr:ResponseMessage><sr:ServiceReference>8.2</sr:ServiceReference>"
        "<sr:ServiceReferenceVariant>8.2</sr:ServiceReferenceVariant><sr:DSPInventory>"
        "<sr:Device><sr:DeviceID>00-DB-12-34-56-78-90-A0</sr:DeviceID><sr:DeviceType>ESME</sr:DeviceType>"
        "<sr:DeviceStatus>Commissioned</sr:DeviceStatus><sr:DeviceManufacturer>1234</sr:DeviceManufacturer>"
        "<sr:DeviceModel>5678</sr:DeviceModel><sr:DeviceFirmwareVersion>0123ABCE</sr:DeviceFirmwareVersion>"
        "<sr:ImportMPxN>1234567890123</sr:ImportMPxN></sr:Device>"
        "<sr:Device><sr:DeviceID>88-73-84-90-6A-10-02-DB</sr:DeviceID><sr:DeviceType>CHF</sr:DeviceType>"
        "<sr:DeviceStatus>Commissioned</sr:DeviceStatus></sr:Device>"
        "</sr:DSPInventory></sr:ResponseMessage></sr:Body></sr:Response>"
    ).encode()
