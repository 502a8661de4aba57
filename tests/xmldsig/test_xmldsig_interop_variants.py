"""Serialisation variants of one DUIS message that a DSP or test tool may send (all valid, all correctly
signed): each verifies, decodes to the same model, and xmlsec1 agrees (the twentieth session's interoperability review)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree
from xmldsig_docs import SR, ad1_alert

from gateway.duis.decode import decode
from gateway.duis.xmldsig import DSIG_NS, sign, verify
from gateway.smki import CertificateStore, SigningPolicy, SmkiCertificate

Xmlsec = Callable[[bytes, Path, Path], subprocess.CompletedProcess[str]]
_B = ad1_alert()
_BODY = _B[_B.find(b"?>") + 2 :]
_SRD = f'xmlns:sr="{SR}"'.encode()


def _dflt(b: bytes) -> bytes:
    return re.sub(rb"<(/?)sr:", rb"<\1", b).replace(b"xmlns:sr=", b"xmlns=")


def _splice(doc: bytes, signed: bytes) -> bytes:
    """Put the Signature of ``signed`` (sign()'s output of the same infoset) into ``doc``'s own bytes."""
    sig = signed[re.search(rb"<(?:\w+:)?Signature[ >]", signed).start() : signed.rfind(b"</")]  # type: ignore[union-attr]
    end = doc.rfind(b"</")
    return doc[:end] + sig + doc[end:]


_SIGNED: dict[str, Callable[[Callable[..., bytes]], bytes]] = {
    "sr_default_ns": lambda s: s(_dflt(_B)),
    "sr_default_ns_sig_default_ns": lambda s: s(_dflt(_B), prefix=None),
    "sr_other_prefix": lambda s: s(_B.replace(b"sr:", b"duis:").replace(b"xmlns:sr=", b"xmlns:duis=")),
    "sig_prefix_dsig": lambda s: s(_B, prefix="dsig"),
    "sig_no_prefix": lambda s: s(_B, prefix=None),
    "ds_declared_on_root": lambda s: s(_B.replace(_SRD, _SRD + f' xmlns:ds="{DSIG_NS}"'.encode())),
    "ns_decls_on_inner_elements": lambda s: s(
        _B.replace(_SRD, f'xmlns="{SR}"'.encode())
        .replace(b"<sr:Response ", b"<Response ")
        .replace(b"</sr:Response>", b"</Response>")
        .replace(b"<sr:Header>", b"<sr:Header " + _SRD + b">")
        .replace(b"<sr:Body>", f'<b:Body xmlns:b="{SR}">'.encode())
        .replace(b"</sr:Body>", b"</b:Body>")
        .replace(b"<sr:DCCAlertMessage>", b"<sr:DCCAlertMessage " + _SRD + b">")
    ),
    "no_decl": lambda s: _splice(_BODY, s(_B)),
    "standalone_yes": lambda s: _splice(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + _BODY, s(_B)),
    "bom_decl": lambda s: b"\xef\xbb\xbf" + s(_B),
    "bom_no_decl_leading_ws": lambda s: b"\xef\xbb\xbf\r\n" + _splice(_BODY, s(_B)),
    "pretty_crlf": lambda s: s(etree.tostring(etree.fromstring(_BODY), pretty_print=True)).replace(b"\n", b"\r\n"),
    "single_quotes_attr_order": lambda s: _splice(
        _B.replace(
            b'<sr:Response xmlns:sr="' + SR.encode() + b'" schemaVersion="5.4">',
            b"<sr:Response schemaVersion='5.4' xmlns:sr='" + SR.encode() + b"'>",
        ),
        s(_B).replace(b'"', b"'"),
    ),
    "expanded_empty_elements": lambda s: re.sub(rb"<(ds:\w+)( [^>]*)/>", rb"<\1\2></\1>", s(_B)),
    "char_refs": lambda s: _splice(
        _B.replace(b"1234567890123", b"&#49;23456789012&#x33;").replace(b"AD1", b"A&#x44;1"),
        re.sub(rb"(<ds:SignatureValue>)(.{76})", rb"\1\2&#13;\n", s(_B)).replace(b"CN=Z1", b"CN&#x3D;Z1"),
    ),
}


@pytest.mark.parametrize("variant", sorted(_SIGNED))
def test_serialisation_variant_verifies_and_decodes_the_same(
    variant: str,
    dsp: SmkiCertificate,
    store: CertificateStore,
    policy: SigningPolicy,
    certs_dir: Path,
    xmlsec1: Xmlsec,
    tmp_path: Path,
) -> None:
    assert dsp.private_key is not None
    key = dsp.private_key

    def s(doc: bytes, prefix: str | None = "ds") -> bytes:
        return sign(doc, key, dsp, prefix=prefix)

    data = _SIGNED[variant](s)
    r = verify(data, store, policy)
    assert r.valid, r
    assert decode(data) == decode(sign(_B, key, dsp))
    ok = xmlsec1(data, certs_dir / "Z1-accessControlBroker-dSPXmlSign.pem", tmp_path)
    assert ok.returncode == 0, ok.stderr
