"""GBCS message framing: the MAC header (General-Ciphering ``DD 00 …``) and General-Signing (``DF …``).

Theory of operation
-------------------
A GBCS message as carried in DUIS is one of two shapes (GBCS.md §2):

* ``DF …``: a General-Signing APDU on its own: transaction id (CRA flag + 8-byte originator counter),
  originator and recipient system titles (EUI-64), an optional 12-byte date-time, *other information*
  (message code and supplementary fields), the content (DLMS, GBZ or ASN.1 payload), and a signature
  field that is absent (pre-commands), null (``00``) or 64 bytes of ECDSA ``r‖s``.
* ``DD 00 00 00 00 00 00 <len> <SC> <IC:4> <General-Signing APDU> <MAC:12>``: the same APDU wrapped in
  a General-Ciphering MAC header (authentication only).

The variable lengths (MAC header, other-information, content, signature) are BER definite lengths
(GBCS.md §2.3): one octet below 0x80, else ``0x8n`` and n octets (1–4); the fixed ones (``09``, ``08``,
``00``/``0C``) are checked by value. A longer form than needed is accepted where a signature or the MAC
covers the length octets (other-information, content; RTDS ASN.1 payloads themselves write ``82 00
CA``), because changing them breaks the check. Two lengths are covered by nothing: the signature
field's (the signature covers the APDU only up to the last content byte) and the MAC header's (the
GMAC's additional data skips it). Those must be minimal (``40`` for a signature, ``00`` for a null one, as GBCS.md §2.3 and every
RTDS vector write them), else :class:`gbcs.errors.NonMinimalLength`: with ``81 40`` accepted too, one
device-signed frame would have several byte forms that all verify.

:func:`parse_frame` is a single forward pass over the bytes that records *offsets*, not copies: the
typed payload is decoded only on demand (:func:`gbcs.payload.decode_payload`), and the crypto layer
cuts the signed range, the MAC's additional data and the tag out of ``Frame.raw`` by offset. Every
malformed input raises a :class:`gbcs.errors.GbcsError` subclass saying where and what; no other
exception escapes. :func:`build_general_signing`, :func:`wrap_mac_header` and (in :mod:`gbcs.crypto`)
``sign_frame`` are the inverse, for round-trip tests and fixture tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from gbcs.errors import (
    BadField,
    LengthMismatch,
    NonMinimalLength,
    NotGbcs,
    TrailingBytes,
    Truncated,
    UnsupportedFrame,
)

__all__ = [
    "CRA",
    "Frame",
    "MacHeader",
    "SignatureField",
    "build_general_signing",
    "encode_length",
    "parse_frame",
    "read_length",
    "wrap_mac_header",
]

GENERAL_CIPHERING = 0xDD
GENERAL_SIGNING = 0xDF
MAC_LENGTH = 12
SIGNATURE_LENGTH = 64
DATE_TIME_LENGTH = 12
_MAC_HEADER_PREFIX = b"\xdd\x00\x00\x00\x00\x00\x00"


class CRA(IntEnum):
    """The CRA flag of the transaction id."""

    COMMAND = 1
    RESPONSE = 2
    ALERT = 3


class SignatureField(IntEnum):
    """What the General-Signing signature field holds."""

    ABSENT = 0  # no field at all (pre-commands)
    NULL = 1  # a zero length (``00``)
    PRESENT = 2  # 64 bytes r‖s


def read_length(buf: bytes, pos: int, end: int, what: str, *, minimal: bool = False) -> tuple[int, int]:
    """Read a BER definite length at ``pos``; return ``(length, position after the length field)``.

    Long forms with 1–4 length octets are accepted, also for lengths a shorter form would hold, unless
    ``minimal`` (a length no signature or MAC covers: module docstring). Raises :class:`Truncated`,
    :class:`BadField` or :class:`NonMinimalLength`.
    """
    if pos >= end:
        raise Truncated(f"input ends where the {what} length was expected", pos)
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if n == 0:
        raise BadField(f"{what} length uses the indefinite form (0x80), not allowed in GBCS", pos)
    if n > 4:
        raise BadField(f"{what} length has {n} length octets (at most 4 supported)", pos)
    if pos + 1 + n > end:
        raise Truncated(f"{what} length field needs {n} more octets", pos)
    length = int.from_bytes(buf[pos + 1 : pos + 1 + n], "big")
    if minimal and n != len(encode_length(length)) - 1:
        raise NonMinimalLength(
            f"{what} length {length} written as {buf[pos : pos + 1 + n].hex(' ')}: no signature or MAC covers "
            f"it, so only its minimal form {encode_length(length).hex(' ')} is accepted",
            pos,
        )
    return length, pos + 1 + n


def encode_length(n: int) -> bytes:
    """BER definite length, minimal form."""
    if n < 0:
        raise ValueError("negative length")
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(body) > 4:
        raise ValueError(f"length {n} too large")
    return bytes((0x80 | len(body),)) + body


@dataclass(frozen=True, slots=True)
class MacHeader:
    """The General-Ciphering MAC header fields that matter for the MAC check."""

    security_control: int
    invocation_counter: int
    #: offset of the security control byte in ``Frame.raw`` (the MAC's IV/AAD come from here)
    security_header_offset: int


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed GBCS frame. Byte fields are cut from ``raw`` on access; offsets index ``raw``."""

    raw: bytes
    mac_header: MacHeader | None
    apdu_offset: int  # offset of the DF tag
    apdu_end: int  # one past the end of the signature field (== len(raw) - 12 when MAC'd)
    cra: CRA
    originator_counter: int
    originator: int
    recipient: int
    date_time_offset: int | None  # offset of the 12-byte date-time, when present
    other_info_offset: int
    other_info_end: int
    message_code: int
    supplementary_remote_party: int | None
    supplementary_remote_party_counter: int | None
    supplementary_originator_counter: int | None
    supplementary_ka_certificate_offset: int | None  # DER certificate inside other-information
    content_offset: int
    content_end: int
    signature_field: SignatureField
    signature_offset: int | None  # offset of the 64-byte r‖s

    @property
    def content(self) -> bytes:
        return self.raw[self.content_offset : self.content_end]

    @property
    def date_time(self) -> bytes | None:
        o = self.date_time_offset
        return None if o is None else self.raw[o : o + DATE_TIME_LENGTH]

    @property
    def signature(self) -> bytes | None:
        o = self.signature_offset
        return None if o is None else self.raw[o : o + SIGNATURE_LENGTH]

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the ECDSA signature covers: from the byte after ``DF`` through the last content byte."""
        return self.raw[self.apdu_offset + 1 : self.content_end]

    @property
    def mac(self) -> bytes | None:
        return None if self.mac_header is None else self.raw[-MAC_LENGTH:]

    @property
    def general_signing_apdu(self) -> bytes:
        return self.raw[self.apdu_offset : self.apdu_end]

    @property
    def supplementary_ka_certificate(self) -> bytes | None:
        o = self.supplementary_ka_certificate_offset
        return None if o is None else self.raw[o : self.other_info_end]

    @property
    def alert_code(self) -> int | None:
        """The alert code for CRA = 3 frames, found by payload family (GBCS.md §2.4); else ``None``."""
        if self.cra != CRA.ALERT:
            return None
        c = self.raw
        o = self.content_offset
        n = self.content_end - o
        if n >= 5 and c[o] == 0x01 and c[o + 1] == 0x09:
            return int.from_bytes(c[o + 3 : o + 5], "big")
        if n >= 11 and c[o] == 0x0F and c[o + 8] == 0x12:
            return int.from_bytes(c[o + 9 : o + 11], "big")
        if n >= 4 and c[o] == 0x30:
            # SEQUENCE { INTEGER alertCode, … }: find the first INTEGER after the SEQUENCE header
            p = o + 2 if c[o + 1] < 0x80 else o + 2 + (c[o + 1] & 0x7F)
            if p + 2 <= self.content_end and c[p] == 0x02:
                ln = c[p + 1]
                if 0 < ln <= 3 and p + 2 + ln <= self.content_end:
                    return int.from_bytes(c[p + 2 : p + 2 + ln], "big", signed=False)
        return None


def parse_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Parse a binary GBCS frame (``DD 00 …`` MAC header or ``DF …`` General-Signing).

    Raises a :class:`gbcs.errors.GbcsError` subclass for anything malformed, truncated or trailing.
    """
    raw = bytes(data)
    end = len(raw)
    if end == 0:
        raise Truncated("empty input", 0)
    tag = raw[0]
    if tag == GENERAL_SIGNING:
        return _parse_general_signing(raw, 0, end, None)
    if tag != GENERAL_CIPHERING:
        raise NotGbcs(f"first byte 0x{tag:02X} is neither 0xDD (General-Ciphering) nor 0xDF (General-Signing)", 0)
    if end < 2:
        raise Truncated("input ends after the General-Ciphering tag", 1)
    if raw[1] != 0x00:
        raise UnsupportedFrame(
            f"General-Ciphering with a {raw[1]}-byte transaction id (GBT/routing header) is not supported; "
            "DUIS payloads are reassembled",
            1,
        )
    if end < 7:
        raise Truncated("input ends inside the General-Ciphering header", end)
    if raw[:7] != _MAC_HEADER_PREFIX:
        bad = next(i for i in range(2, 7) if raw[i] != 0)
        field = ("originator-system-title", "recipient-system-title", "date-time", "other-information", "key-info")[
            bad - 2
        ]
        raise BadField(f"MAC header {field} must be empty (0x00), got 0x{raw[bad]:02X}", bad)
    length, pos = read_length(raw, 7, end, "ciphered service", minimal=True)  # outside the MAC's AAD
    if pos + length > end:
        raise Truncated(f"ciphered service length {length} but only {end - pos} bytes follow", 7)
    if pos + length < end:
        raise TrailingBytes(f"{end - pos - length} bytes after the ciphered service (length {length})", pos + length)
    if length < 5 + 1 + MAC_LENGTH:
        raise LengthMismatch(f"ciphered service length {length} too short for header, APDU and MAC", 7)
    sc = raw[pos]
    if sc & 0xF0 != 0x10:
        raise BadField(f"security control 0x{sc:02X}: only authentication-only (0x1_) MAC headers are defined", pos)
    ic = int.from_bytes(raw[pos + 1 : pos + 5], "big")
    apdu_start = pos + 5
    inner_end = end - MAC_LENGTH
    if raw[apdu_start] != GENERAL_SIGNING:
        raise BadField(f"MAC header must wrap a General-Signing APDU (0xDF), got 0x{raw[apdu_start]:02X}", apdu_start)
    return _parse_general_signing(raw, apdu_start, inner_end, MacHeader(sc, ic, pos))


def _eui(raw: bytes, pos: int) -> int:
    return int.from_bytes(raw[pos : pos + 8], "big")


def _expect(raw: bytes, pos: int, end: int, value: int, what: str) -> None:
    if pos >= end:
        raise Truncated(f"input ends where the {what} was expected", pos)
    if raw[pos] != value:
        raise BadField(f"{what} must be 0x{value:02X}, got 0x{raw[pos]:02X}", pos)


def _parse_general_signing(raw: bytes, start: int, end: int, mac: MacHeader | None) -> Frame:
    in_mac = " (inside the MAC header's declared length)" if mac is not None else ""
    if end - start < 31:
        raise Truncated(f"General-Signing header needs at least 31 bytes, {end - start} available{in_mac}", end)
    _expect(raw, start + 1, end, 0x09, "transaction-id length")
    cra_v = raw[start + 2]
    if cra_v not in (1, 2, 3):
        raise BadField(f"CRA flag must be 1 (command), 2 (response) or 3 (alert), got {cra_v}", start + 2)
    counter = int.from_bytes(raw[start + 3 : start + 11], "big")
    _expect(raw, start + 11, end, 0x08, "originator-system-title length")
    originator = _eui(raw, start + 12)
    _expect(raw, start + 20, end, 0x08, "recipient-system-title length")
    recipient = _eui(raw, start + 21)
    pos = start + 29
    dt_len = raw[pos]
    dt_off: int | None = None
    if dt_len == DATE_TIME_LENGTH:
        dt_off = pos + 1
        pos += 1 + DATE_TIME_LENGTH
        if pos > end:
            raise Truncated(f"date-time needs 12 bytes{in_mac}", dt_off)
    elif dt_len == 0:
        pos += 1
    else:
        raise BadField(f"date-time length must be 0 or 12, got {dt_len}", pos)
    oi_len, oi_start = read_length(raw, pos, end, "other-information")
    oi_end = oi_start + oi_len
    if oi_end > end:
        raise Truncated(f"other-information length {oi_len} runs past the end{in_mac}", pos)
    if oi_len < 2:
        raise BadField(f"other-information length {oi_len}: at least the 2-byte message code is required", pos)
    if oi_len not in (2, 10, 18, 26) and oi_len <= 26:
        raise BadField(f"other-information length {oi_len} is not one of 2, 10, 18, 26 or >26", pos)
    message_code = int.from_bytes(raw[oi_start : oi_start + 2], "big")
    supp_rp = supp_rp_ctr = supp_orig_ctr = cert_off = None
    if oi_len >= 10:
        supp_rp = _eui(raw, oi_start + 2)
    if oi_len >= 18:
        supp_rp_ctr = int.from_bytes(raw[oi_start + 10 : oi_start + 18], "big")
    if oi_len == 26:
        supp_orig_ctr = int.from_bytes(raw[oi_start + 18 : oi_start + 26], "big")
    elif oi_len > 26:
        cert_off = oi_start + 18
        if raw[cert_off] != 0x30:
            raise BadField(f"supplementary KA certificate must be a DER SEQUENCE, got 0x{raw[cert_off]:02X}", cert_off)
    c_len, c_start = read_length(raw, oi_end, end, "content")
    c_end = c_start + c_len
    if c_end > end:
        raise Truncated(f"content length {c_len} but only {end - c_start} bytes remain{in_mac}", oi_end)
    if c_end == end:
        sig_field = SignatureField.ABSENT
        sig_off = None
        apdu_end = end
    else:
        s_len, s_start = read_length(raw, c_end, end, "signature", minimal=True)  # not signed itself
        if s_len == 0:
            sig_field, sig_off = SignatureField.NULL, None
        elif s_len == SIGNATURE_LENGTH:
            sig_field, sig_off = SignatureField.PRESENT, s_start
        else:
            raise BadField(f"signature length must be 0 or 64, got {s_len}", c_end)
        apdu_end = s_start + s_len
        if apdu_end > end:
            raise Truncated(f"signature needs 64 bytes, {end - s_start} available{in_mac}", s_start)
        if apdu_end < end:
            if mac is not None:
                raise LengthMismatch(
                    f"General-Signing APDU ends at {apdu_end} but the MAC header puts the MAC at {end}", apdu_end
                )
            raise TrailingBytes(f"{end - apdu_end} bytes after the signature field", apdu_end)
    return Frame(
        raw=raw,
        mac_header=mac,
        apdu_offset=start,
        apdu_end=apdu_end,
        cra=CRA(cra_v),
        originator_counter=counter,
        originator=originator,
        recipient=recipient,
        date_time_offset=dt_off,
        other_info_offset=oi_start,
        other_info_end=oi_end,
        message_code=message_code,
        supplementary_remote_party=supp_rp,
        supplementary_remote_party_counter=supp_rp_ctr,
        supplementary_originator_counter=supp_orig_ctr,
        supplementary_ka_certificate_offset=cert_off,
        content_offset=c_start,
        content_end=c_end,
        signature_field=sig_field,
        signature_offset=sig_off,
    )


def build_general_signing(
    *,
    cra: int,
    originator_counter: int,
    originator: int,
    recipient: int,
    message_code: int,
    content: bytes,
    date_time: bytes | None = None,
    supplementary_remote_party: int | None = None,
    supplementary_remote_party_counter: int | None = None,
    supplementary_originator_counter: int | None = None,
    signature: bytes | None = None,
    null_signature: bool = False,
) -> bytes:
    """Encode a General-Signing APDU (``DF …``).

    The signature field is the 64-byte ``signature`` when given, a null ``00`` field when
    ``null_signature``, else absent (a pre-command). To sign, build without a signature and pass the
    result to :func:`gbcs.crypto.sign_frame`.
    """
    if cra not in (1, 2, 3):
        raise ValueError(f"CRA flag must be 1, 2 or 3, got {cra}")
    if date_time is not None and len(date_time) != DATE_TIME_LENGTH:
        raise ValueError("date_time must be 12 bytes (DLMS date-time)")
    if signature is not None and len(signature) != SIGNATURE_LENGTH:
        raise ValueError("signature must be 64 bytes r‖s")
    oi = message_code.to_bytes(2, "big")
    if supplementary_remote_party is not None:
        oi += supplementary_remote_party.to_bytes(8, "big")
        if supplementary_remote_party_counter is not None:
            oi += supplementary_remote_party_counter.to_bytes(8, "big")
            if supplementary_originator_counter is not None:
                oi += supplementary_originator_counter.to_bytes(8, "big")
    elif supplementary_remote_party_counter is not None or supplementary_originator_counter is not None:
        raise ValueError("supplementary counters need a supplementary remote party id")
    out = bytearray(b"\xdf\x09")
    out.append(cra)
    out += originator_counter.to_bytes(8, "big")
    out += b"\x08" + originator.to_bytes(8, "big")
    out += b"\x08" + recipient.to_bytes(8, "big")
    out += b"\x00" if date_time is None else b"\x0c" + date_time
    out += encode_length(len(oi)) + oi
    out += encode_length(len(content)) + content
    if signature is not None:
        out += b"\x40" + signature
    elif null_signature:
        out += b"\x00"
    return bytes(out)


def wrap_mac_header(apdu: bytes, mac: bytes, *, security_control: int = 0x11, invocation_counter: int = 0) -> bytes:
    """Wrap a General-Signing APDU in a General-Ciphering MAC header with the given 12-byte ``mac``.

    :func:`gbcs.crypto.mac_frame` computes the MAC; this only encodes.
    """
    if len(mac) != MAC_LENGTH:
        raise ValueError("MAC must be 12 bytes")
    body = bytes((security_control,)) + invocation_counter.to_bytes(4, "big") + apdu + mac
    return _MAC_HEADER_PREFIX + encode_length(len(body)) + body
