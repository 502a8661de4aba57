"""BER length forms in GBCS frames. A length that a signature or the MAC covers may be written in a longer
form than needed (RTDS ASN.1 payloads do: ``82 00 CA``), since changing it breaks the check. The two
lengths nothing covers, the signature field's and the MAC header's, must be minimal (``40``, ``00``, as
GBCS.md §2.3 and every RTDS vector write them): ``81 40`` used to be accepted, so one device-signed frame
had several byte forms that all verified. Now any longer form is ``gbcs_non_minimal_length``."""

from __future__ import annotations

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.gbcs_keys import DirectoryKeyStore
from gateway.testkit.pki import derive_key
from gbcs.crypto import Status, Verifier, sign_frame
from gbcs.errors import BadField, NonMinimalLength
from gbcs.frame import SignatureField, build_general_signing, encode_length, parse_frame, read_length
from gbcs.payload import decode_payload

CS06_8F66 = "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"  # device-signed, no MAC header


def longer_forms(n: int) -> list[bytes]:
    """Every BER definite encoding of ``n`` (1-4 length octets) other than the minimal one."""
    minimal = encode_length(n)
    out = []
    for octets in range(1, 5):
        if n < 1 << (8 * octets):
            form = bytes((0x80 | octets,)) + n.to_bytes(octets, "big")
            if form != minimal:
                out.append(form)
    return out


def with_signature_length(raw: bytes, form: bytes) -> bytes:
    """``raw`` (a General-Signing APDU with a signature field) with its signature length written as ``form``."""
    frame = parse_frame(raw)
    assert frame.mac_header is None and frame.signature_field is not SignatureField.ABSENT
    return raw[: frame.content_end] + form + raw[frame.content_end + 1 :]


def test_a_signed_alert_with_a_long_form_signature_length_is_refused_not_verified(
    vector: VectorFn, keystore: DirectoryKeyStore
) -> None:
    raw = vector(CS06_8F66)
    frame = parse_frame(raw)
    assert raw[frame.content_end] == 0x40
    assert Verifier(keystore).verify_signature(frame, RTDS_CHECK_TIME).status is Status.VALID
    for form in longer_forms(64):  # 81 40, 82 00 40, 83 00 00 40, 84 00 00 00 40
        with pytest.raises(NonMinimalLength) as exc:
            parse_frame(with_signature_length(raw, form))
        assert exc.value.code == "gbcs_non_minimal_length" and exc.value.offset == frame.content_end
        assert isinstance(exc.value, BadField)  # a bad header field, as callers already handle
        assert "signature length 64" in exc.value.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_signature_field_has_exactly_one_accepted_length_form(vectors: dict[str, bytes], data: st.DataObject) -> None:
    signed = sorted(
        n for n, raw in vectors.items()
        if (f := parse_frame(raw)).mac_header is None and f.signature_field is not SignatureField.ABSENT
    )  # fmt: skip
    raw = vectors[data.draw(st.sampled_from(signed))]
    frame = parse_frame(raw)
    n = 64 if frame.signature_field is SignatureField.PRESENT else 0
    assert raw[frame.content_end : frame.content_end + 1] == encode_length(n)  # RTDS writes it minimally
    form = data.draw(st.sampled_from(longer_forms(n)))
    with pytest.raises(NonMinimalLength):
        parse_frame(with_signature_length(raw, form))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mac_header_length_has_exactly_one_accepted_form(vectors: dict[str, bytes], data: st.DataObject) -> None:
    wrapped = sorted(n for n, raw in vectors.items() if raw[0] == 0xDD)
    raw = vectors[data.draw(st.sampled_from(wrapped))]
    size, after = read_length(raw, 7, len(raw), "ciphered service")
    assert raw[7:after] == encode_length(size)
    form = data.draw(st.sampled_from(longer_forms(size)))
    with pytest.raises(NonMinimalLength) as exc:
        parse_frame(raw[:7] + form + raw[after:])
    assert exc.value.offset == 7


def test_lengths_covered_by_the_signature_may_still_use_a_longer_form(vector: VectorFn) -> None:
    # RTDS CS02b responses carry ASN.1 written with 82 00 CA-style lengths: they still decode
    raw = vector("CS02bNOByNO_6.15.1_SUCCESS_RESPONSE")
    frame = parse_frame(raw)
    assert b"\x82\x00" in frame.content
    decode_payload(frame)
    # and a content length written long: accepted (the signature covers it, so it no longer verifies)
    key = derive_key("length-forms")
    apdu = build_general_signing(cra=3, originator_counter=1, originator=0x00DB1234567890A0,
                                 recipient=0x90B3D51F30010000, message_code=0x00CA, content=b"\x30\x00")  # fmt: skip
    at = apdu.index(b"\x02\x30\x00")  # content length 2, then the content
    long_content = apdu[:at] + b"\x81\x02" + apdu[at + 1 :]
    assert parse_frame(long_content).content == b"\x30\x00"
    assert parse_frame(sign_frame(long_content, key)).content == b"\x30\x00"


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 2**32 - 1))
def test_every_length_has_one_minimal_form_and_every_longer_one_is_refused_where_minimal_is_required(n: int) -> None:
    minimal = encode_length(n)
    assert read_length(minimal, 0, len(minimal), "x", minimal=True) == (n, len(minimal))
    for form in longer_forms(n):
        assert read_length(form, 0, len(form), "x") == (n, len(form))  # BER: accepted where covered
        with pytest.raises(NonMinimalLength):
            read_length(form, 0, len(form), "x", minimal=True)


def test_sign_frame_writes_the_minimal_signature_length(vector: VectorFn) -> None:
    key = derive_key("length-forms")
    precommand = vector("CS06_11.3_IMMEDIATE_SUCCESS_PRECOMMAND")
    signed = sign_frame(precommand, key)
    frame = parse_frame(signed)
    assert frame.signature_field is SignatureField.PRESENT and signed[frame.content_end] == 0x40
