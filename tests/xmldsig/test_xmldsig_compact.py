"""The literal reader of *compact* Signature runs reads exactly what the profile's expression reads.

``verify`` reads a Signature written the way DCC and ``sign`` write it (no white space between its
elements; SignatureValue possibly wrapped with ``&#13;`` and a line break) with a few literal
comparisons (``_compact_profile``) instead of the full regular expression (``_pattern_profile``), and
goes to the expression for anything else. These tests pin that the reader is never looser than the
expression: whatever run it accepts - DCC samples as received, ``sign`` output for every prefix shape,
and runs mutated at random - the expression accepts too and gives the same profile; and that the
literal pieces are checked against the expression when they are built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from xmldsig_docs import SR, activate_firmware_response, ad1_alert

from gateway.duis import xmldsig
from gateway.duis.safexml import parse_xml
from gateway.duis.xmldsig import DSIG_NS, sign
from gateway.smki import SmkiCertificate


def _run(data: bytes) -> tuple[bytes, int, int, xmldsig._Forms]:
    """The document's inclusive C14N, the enveloped Signature's run in it, and the forms for its prefix."""
    root = parse_xml(data)
    sig = root[len(root) - 1]
    canonical = etree.tostring(root.getroottree(), method="c14n")
    forms = xmldsig._forms(sig.prefix)
    span = xmldsig._signature_span(canonical, sig, forms)
    assert span is not None
    return canonical, span[0], span[1], forms


def _both(c: bytes, start: int, end: int, forms: xmldsig._Forms) -> xmldsig._Profile | None:
    """The compact reader's answer, asserted to be the expression's whenever there is one."""
    compact = xmldsig._compact_profile(c, start, end, forms)
    if compact is not None:
        assert compact == xmldsig._pattern_profile(c, start, end, forms)
    return compact


def test_dccboxed_samples_as_received_are_read_literally(shared: Path) -> None:
    read = 0
    for name in ("dccboxed-message.xml", "read-inventory-response-5.4.xml", "readfw-response.xml"):
        data = (shared / "duis" / "samples" / name).read_bytes()
        c, start, end, forms = _run(data)
        assert b"&#xD;" in c[start:end]  # (Java wraps the SignatureValue: the reader must take that)
        read += _both(c, start, end, forms) is not None
    assert read == 3


ROOT_DECLS = ["", f' xmlns:ns3="{DSIG_NS}"', f' xmlns:ds="{DSIG_NS}"', f' xmlns:a.b-c="{DSIG_NS}"']


@pytest.mark.parametrize("prefix", ["ds", None, "ns3", "a.b-c", "sr"])
@pytest.mark.parametrize("root_decl", ROOT_DECLS)
def test_sign_output_is_read_literally_for_every_prefix_shape(
    prefix: str | None, root_decl: str, dsp: SmkiCertificate
) -> None:
    # the Signature declaring its prefix itself, or not (the root already binds it to dsig)
    assert dsp.private_key is not None
    unsigned = ad1_alert().replace(f'xmlns:sr="{SR}"'.encode(), f'xmlns:sr="{SR}"{root_decl}'.encode())
    c, start, end, forms = _run(sign(unsigned, dsp.private_key, dsp, prefix=prefix))
    assert _both(c, start, end, forms) is not None


def _signed(dsp: SmkiCertificate, gbcs_hex: str) -> bytes:
    assert dsp.private_key is not None
    return sign(activate_firmware_response(gbcs_hex), dsp.private_key, dsp)


@pytest.mark.parametrize(
    ("old", "new", "literal"),
    [
        (b"<ds:SignatureValue>", b"<ds:SignatureValue>&#13;\n \t", True),  # wrapping inside the value
        (b"</ds:SignatureValue>", b"\n</ds:SignatureValue>", True),
        (b"</ds:SignedInfo>", b"</ds:SignedInfo>\n", False),  # white space between elements: the expression
        (b"<ds:KeyInfo>", b"<ds:KeyInfo>\n", False),
        (b"<ds:SignatureValue>", b'<ds:SignatureValue Id="v">', False),
        (b"<ds:X509SerialNumber>", b"<ds:X509SerialNumber> ", False),
        (b"<ds:X509IssuerName>", b"<ds:X509IssuerName>CN=&amp;", False),  # escaped: the walk
        (b"<ds:SignatureValue>", b"<ds:SignatureValue>AB", False),  # not 64 octets: the walk names it
    ],
)
def test_shapes_the_literal_reader_takes_or_leaves(
    old: bytes, new: bytes, literal: bool, dsp: SmkiCertificate, cs06_immediate_response_hex: str
) -> None:
    edited = _signed(dsp, cs06_immediate_response_hex).replace(old, new, 1)
    c, start, end, forms = _run(edited)
    assert (_both(c, start, end, forms) is not None) is literal


# The mutations: text likely to matter to either reader, inserted, or bytes deleted or overwritten; at
# a random place in the run, or around one of the values the readers take out of it (most random
# places are in fixed text, which both refuse at once).
_PIECES = [" ", "\n", "\t", "&#xD;", "<", ">", "&", "=", "==", "A", "0", "/", '"', "x:", "</ds:Signature>"]
_MUTATION = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]),
    st.sampled_from([None, "dv", "sv", "iss", "ser"]),
    st.floats(0, 1, exclude_max=True),
    st.sampled_from(_PIECES),
    st.integers(1, 3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=3), prefix=st.sampled_from(["ds", None, "ns3"]))
def test_mutated_runs_are_read_literally_only_as_the_expression_reads_them(
    mutations: list[tuple[str, str | None, float, str, int]], prefix: str | None, dsp: SmkiCertificate
) -> None:
    assert dsp.private_key is not None
    c, start, end, forms = _run(
        sign(activate_firmware_response("00" * 40), dsp.private_key, dsp, prefix=prefix)
    )
    assert _both(c, start, end, forms) is not None
    m = forms.pattern.fullmatch(c, start, end)
    assert m is not None
    for op, group, where, piece, n in mutations:
        lo, hi = (start, end) if group is None else (m.start(group) - 2, m.end(group) + 2)
        at = max(start, min(end, lo + int(where * (hi - lo))))
        text = piece.encode()
        if op == "insert":
            c, end = c[:at] + text + c[at:], end + len(text)
        elif op == "delete":
            n = min(n, end - at)
            c, end = c[:at] + c[at + n :], end - n
        else:
            text = text[: end - at]
            c = c[:at] + text + c[at + len(text) :]
    _both(c, start, end, forms)  # asserts compact == expression whenever the compact reader answers


def test_compact_pieces_that_leave_the_profile_are_refused_when_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build = xmldsig._forms.__wrapped__  # (the uncached builder)
    assert build("zz").heads[1].startswith(b'<zz:Signature xmlns:zz="')
    monkeypatch.setattr(
        xmldsig,
        "_compact_si_head",
        lambda p: b"<" + p + b'DigestMethod Algorithm="x"/><' + p + b"DigestValue>",
    )
    with pytest.raises(RuntimeError, match="left the profile"):
        build("zz")
