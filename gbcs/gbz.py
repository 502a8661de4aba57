"""GBZ (ZigBee Smart Energy) payloads, GSME/GPF use cases.

Layout: profile ``01 09``, component count, then (alerts only) alert code(2) and time stamp(4, seconds
since 2000), then components. A component is control(1) cluster(2) length(2) and ``length`` bytes:
an optional from-date-time(4) (control bit 0x10), or for an encrypted component (bit 0x02) an
additional-header control(1) and frame counter(1); then the ZCL header (frame control, optional
manufacturer code, sequence number, command id) and the ZCL payload, which for an encrypted component
is ciphered-length(2) ‖ ``31 ‖ IC(4) ‖ ciphertext ‖ tag(12)``. ZCL payloads are kept as hex (they are
little-endian, per-cluster structures).
"""

from __future__ import annotations

from gbcs.reader import EncryptedBlock, Reader
from gbcs.timefmt import gbz_time_json

__all__ = ["CLUSTERS", "decode_component", "decode_gbz"]

CLUSTERS = {
    0x0000: "Basic",
    0x0700: "Price",
    0x0702: "Metering",
    0x0703: "Messaging",
    0x0705: "Prepayment",
    0x0707: "Calendar",
    0x0708: "Device Management",
    0x0709: "Events",
}

LAST_COMPONENT = 0x01
ENCRYPTED = 0x02
FROM_DATE_TIME = 0x10


def decode_component(r: Reader, index: int, blocks: list[EncryptedBlock]) -> dict[str, object]:
    at = r.pos
    control = r.u8("component control field")
    cluster = r.uint(2, "cluster id")
    length = r.uint(2, "component length")
    body = r.sub(length, "component body", f"GBZ component {index}")
    comp: dict[str, object] = {"offset": at, "control": control, "cluster": f"{cluster:04X}"}
    if cluster in CLUSTERS:
        comp["cluster_name"] = CLUSTERS[cluster]
    if control & ENCRYPTED:
        comp["additional_header_control"] = body.u8("additional header control")
        comp["additional_header_frame_counter"] = body.u8("additional header frame counter")
    elif control & FROM_DATE_TIME:
        comp["from_date_time"] = gbz_time_json(body.uint(4, "from-date-time"))
    fc = body.u8("ZCL frame control")
    comp["zcl_frame_control"] = fc
    if fc & 0x04:
        comp["manufacturer_code"] = body.uint(2, "ZCL manufacturer code", little=True)
    comp["zcl_sequence"] = body.u8("ZCL sequence number")
    comp["zcl_command"] = body.u8("ZCL command id")
    if control & ENCRYPTED:
        clen = body.uint(2, "ciphered information length")
        if clen < 5 + 12:
            raise body.fail(f"ciphered information length {clen} shorter than header and tag")
        start = body.pos
        sec = body.sub(clen, "ciphered information")
        if r.buf[start] != 0x31:
            raise body.fail(f"security header control must be 0x31, got 0x{r.buf[start]:02X}", start)
        sec.pos = sec.end
        comp["encrypted_block"] = len(blocks)
        blocks.append(EncryptedBlock(start, clen, "GBZ", f"GBZ component {index}"))
    else:
        comp["zcl_payload"] = body.take(body.left, "ZCL payload").hex()
    body.done("component")
    return comp


def decode_gbz(r: Reader, *, alert: bool, blocks: list[EncryptedBlock], message_code: int) -> dict[str, object]:
    """Decode a GBZ payload filling ``r``. Alert-specific tails (message codes 0x00CD, 0x00CF, 0x00F2)
    are decoded by :mod:`gbcs.payload`; here they are reported as ``use_case_specific`` hex."""
    profile = r.uint(2, "GBZ profile id")
    if profile != 0x0109:
        raise r.fail(f"GBZ profile id must be 0x0109, got 0x{profile:04X}", r.pos - 2)
    count = r.u8("GBZ component count")
    out: dict[str, object] = {"profile": "0109", "component_count": count}
    if alert:
        out["alert_code"] = r.uint(2, "GBZ alert code")
        out["time_stamp"] = gbz_time_json(r.uint(4, "GBZ alert time stamp"))
        if message_code in (0x00CD, 0x00CF, 0x00F2):
            out["use_case_specific"] = r.take(r.left, "use-case specific content").hex()
            return out
    comps = [decode_component(r, i + 1, blocks) for i in range(count)]
    out["components"] = comps
    r.done("GBZ components")
    return out
