"""Readable renderings of GBCS frames for the CLI (``duisgw decode``) and logs.

* :func:`looks_like_gbcs` accepts binary GBCS, hex text (any white space) or base64 text and returns
  the binary frame, or ``None`` when the input is none of those.
* :func:`describe` parses, decodes and (given a key store) verifies a frame and returns a JSON-able
  dict: frame fields with message/alert code names, the typed payload (when the use case has one),
  the generic payload tree, and the signature/MAC/decryption results saying which were verified.
* :func:`to_text` renders such a dict as an indented tree.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime

from gbcs.crypto import ValidityPolicy, Verifier
from gbcs.eui import format_eui
from gbcs.frame import GENERAL_CIPHERING, GENERAL_SIGNING, Frame, parse_frame
from gbcs.keystore import KeyStore
from gbcs.payload import decode_payload, decode_plaintext
from gbcs.tables import MESSAGE_CODES, alert_code_name, message_code_name
from gbcs.timefmt import DlmsDateTime

__all__ = ["describe", "frame_summary", "looks_like_gbcs", "to_text"]

_WS = re.compile(rb"\s+")
_HEX = re.compile(rb"(?:0[xX])?[0-9A-Fa-f]+")
_CRA_NAMES = {1: "Command", 2: "Response", 3: "Alert"}


def looks_like_gbcs(raw: bytes) -> bytes | None:
    """Binary GBCS (first byte 0xDD/0xDF) as is; hex or base64 text decoded; else ``None``."""
    if not raw:
        return None
    if raw[0] in (GENERAL_CIPHERING, GENERAL_SIGNING):
        return bytes(raw)
    compact = _WS.sub(b"", raw)
    if not compact:
        return None
    if _HEX.fullmatch(compact) and len(compact) % 2 == 0:
        body = compact[2:] if compact[:2] in (b"0x", b"0X") else compact
        data = binascii.unhexlify(body)
        # all-hex text is read as hex only (a real base64 frame of any size contains non-hex letters)
        return data if data and data[0] in (GENERAL_CIPHERING, GENERAL_SIGNING) else None
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    if data and data[0] in (GENERAL_CIPHERING, GENERAL_SIGNING):
        return data
    return None


def frame_summary(frame: Frame) -> dict[str, object]:
    """The grouping-header fields of ``frame`` with code names (no payload decoding)."""
    info = MESSAGE_CODES.get(frame.message_code)
    out: dict[str, object] = {
        "kind": "MAC header + General-Signing" if frame.mac_header is not None else "General-Signing",
        "length": len(frame.raw),
    }
    if frame.mac_header is not None:
        out["mac_header"] = {
            "security_control": f"0x{frame.mac_header.security_control:02X}",
            "invocation_counter": frame.mac_header.invocation_counter,
        }
    out.update(
        {
            "cra": _CRA_NAMES[frame.cra],
            "originator_counter": frame.originator_counter,
            "originator": format_eui(frame.originator),
            "recipient": format_eui(frame.recipient),
        }
    )
    dt = frame.date_time
    if dt is not None:
        out["date_time"] = DlmsDateTime.from_bytes(dt).to_json()
    out["message_code"] = f"0x{frame.message_code:04X}"
    out["message_code_name"] = message_code_name(frame.message_code)
    if info is not None and info.message_type:
        out["message_type"] = info.message_type
    if frame.supplementary_remote_party is not None:
        out["supplementary_remote_party"] = format_eui(frame.supplementary_remote_party)
    if frame.supplementary_remote_party_counter is not None:
        out["supplementary_remote_party_counter"] = frame.supplementary_remote_party_counter
    if frame.supplementary_originator_counter is not None:
        out["supplementary_originator_counter"] = frame.supplementary_originator_counter
    if frame.supplementary_ka_certificate_offset is not None:
        out["supplementary_ka_certificate_bytes"] = frame.other_info_end - frame.supplementary_ka_certificate_offset
    ac = frame.alert_code
    if ac is not None:
        out["alert_code"] = f"{ac:04X}"
        out["alert_code_name"] = alert_code_name(ac)  # as the payload tree names it
    out["content_length"] = frame.content_end - frame.content_offset
    out["signature"] = frame.signature_field.name.lower()
    return out


def _name_alert_codes(tree: dict[str, object]) -> None:
    """Annotate the alert code of a DLMS Data-Notification or GBZ alert with its name."""
    body = tree.get("body")
    if isinstance(body, dict):
        items = body.get("items")
        if isinstance(items, list) and items and isinstance(items[0], dict):
            first = items[0]
            if first.get("type") == "long-unsigned" and isinstance(first.get("value"), int):
                first["alert_code_name"] = alert_code_name(int(str(first["value"])))
    ac = tree.get("alert_code")
    if isinstance(ac, int):
        tree["alert_code"] = f"{ac:04X}"
        tree["alert_code_name"] = alert_code_name(ac)


def describe(
    data: bytes, keystore: KeyStore | None = None, *, at: datetime | None = None, acb_eui: int | None = None
) -> dict[str, object]:
    """Parse, decode and verify a binary GBCS frame into a JSON-able dict.

    ``at`` is the time certificates must be valid at; without it certificate validity is *not*
    checked, and the output says so. ``acb_eui`` (default: the key store's ``acb_eui`` attribute, if
    any) is needed to check command MACs. Raises :class:`gbcs.errors.GbcsError` for a malformed frame.
    """
    frame = parse_frame(data)
    payload = decode_payload(frame)
    tree = payload.tree
    _name_alert_codes(tree)
    out: dict[str, object] = {"frame": frame_summary(frame)}
    p: dict[str, object] = {"family": payload.family}
    if payload.typed is not None:
        p["typed"] = payload.typed.to_json()
    p["tree"] = tree
    out["payload"] = p
    ver: dict[str, object] = {}
    if keystore is None:
        ver["key_store"] = "none given: nothing verified"
        ver["signature"] = {"status": "unverifiable" if frame.signature is not None else "not present",
                            "reason": "no key store"}
        ver["mac"] = {"status": "unverifiable" if frame.mac_header is not None else "not present",
                      "reason": "no key store"}
        out["verification"] = ver
        return out
    policy = ValidityPolicy.AT_TIME if at is not None else ValidityPolicy.IGNORE
    acb = acb_eui if acb_eui is not None else getattr(keystore, "acb_eui", None)
    verifier = Verifier(keystore, policy=policy, acb_eui=acb if isinstance(acb, int) else None)
    ver["certificate_validity"] = (
        f"checked at {at.isoformat()}" if at is not None else "not checked (no time given)"
    )
    sig = verifier.verify_signature(frame, at)
    mac = verifier.verify_mac(frame, at)
    ver["signature"] = sig.to_json()
    ver["mac"] = mac.to_json()
    if payload.encrypted_blocks:
        decrypted = []
        for d in verifier.decrypt(frame, payload.encrypted_blocks, at):
            entry: dict[str, object] = {"where": d.block.where, **d.check.to_json()}
            if d.plaintext is not None:
                entry["plaintext_hex"] = d.plaintext.hex()
                entry["decoded"] = decode_plaintext(d.plaintext, d.block)
            decrypted.append(entry)
        ver["decryption"] = decrypted
    verified = [name for name, c in (("signature", sig), ("mac", mac)) if c.ok]
    ver["verified"] = verified
    out["verification"] = ver
    return out


def _scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _lines(obj: object, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict | list) and v:
                out.append(f"{pad}{k}:")
                _lines(v, indent + 1, out)
            else:
                out.append(f"{pad}{k}: {_scalar(v) if not isinstance(v, dict | list) else '(empty)'}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, dict | list) and v:
                out.append(f"{pad}[{i}]")
                _lines(v, indent + 1, out)
            else:
                out.append(f"{pad}[{i}] {_scalar(v)}")
    else:
        out.append(f"{pad}{_scalar(obj)}")


def to_text(obj: dict[str, object]) -> str:
    """An indented, readable tree of a :func:`describe` result (or any JSON-able dict)."""
    out: list[str] = []
    _lines(obj, 0, out)
    return "\n".join(out) + "\n"
