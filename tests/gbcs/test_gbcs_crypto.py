"""Signature, MAC and decryption checks: tampering is caught, missing keys are results, the KDF matches
the worked examples of GBCS.md §6.6, and the certificate validity policy is explicit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import RTDS_CHECK_TIME, VectorFn
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.gbcs_keys import DirectoryKeyStore
from gbcs.crypto import Status, ValidityPolicy, Verifier, derive_key, kdf_other_info, mac_wrap, sign_frame
from gbcs.errors import GbcsError
from gbcs.frame import build_general_signing, parse_frame
from gbcs.keystore import HW_MODULE_NAME, MemoryKeyStore, certificate_eui, certificate_role_code

CS06_8F66 = "CS06_11.3_8F66_FUTURE_DATED_SUCCESS_ALERT"
ESME = 0x00DB1234567890A0
SUPPLIER = 0x90B3D51F30010000


def _flip(raw: bytes, bit: int) -> bytes:
    b = bytearray(raw)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def _sig_outcome(v: Verifier, raw: bytes) -> Status | str:
    try:
        frame = parse_frame(raw)
    except GbcsError as e:
        return e.code
    return v.verify_signature(frame, RTDS_CHECK_TIME).status


def test_every_single_bit_flip_in_the_signed_cs06_alert_fails(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    raw = vector(CS06_8F66)
    v = Verifier(keystore)
    assert _sig_outcome(v, raw) is Status.VALID
    frame = parse_frame(raw)
    # the signed bytes, the signature-length byte and the signature itself
    for bit in range(8, len(raw) * 8):
        outcome = _sig_outcome(v, _flip(raw, bit))
        assert outcome is not Status.VALID, f"bit {bit} (byte {bit // 8}) flipped still verifies"
        if frame.content_end * 8 + 8 <= bit:  # inside r||s
            assert outcome is Status.INVALID


@pytest.mark.parametrize(
    "name",
    [
        "CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE",
        "CS06_11.3_FUTURE_DATED_SUCCESS_COMMAND",
        "ECS80_NA_8F36_ALERT",
        "FDRA-ZigBee_NA_8F72_ALERT",
        "ECS68_NA_8F0A_SINGLE_ALERT",
        "CCS08_NA_NA_ALERT",
    ],
)
def test_sampled_bit_flips_in_signed_vectors_fail(vector: VectorFn, keystore: DirectoryKeyStore, name: str) -> None:
    raw = vector(name)
    frame = parse_frame(raw)
    v = Verifier(keystore)
    assert v.verify_signature(frame, RTDS_CHECK_TIME).ok
    start = frame.apdu_offset + 1
    assert frame.signature_offset is not None
    end = frame.signature_offset + 64
    for byte in range(start, end, max(1, (end - start) // 40)):
        for bit in (0, 7):
            assert _sig_outcome(v, _flip(raw, byte * 8 + bit)) is not Status.VALID, (name, byte, bit)


@pytest.mark.parametrize("name", ["GNCA-DLMS_NA_810E_ALERT", "ECS52_11.2_SUCCESS_RESPONSE", "CS06_11.3_IMMEDIATE_SUCCESS_COMMAND"])
def test_bit_flips_in_maced_vectors_fail_the_mac(vector: VectorFn, keystore: DirectoryKeyStore, name: str) -> None:
    raw = vector(name)
    v = Verifier(keystore, acb_eui=keystore.acb_eui)
    assert v.verify_mac(parse_frame(raw), RTDS_CHECK_TIME).ok
    invalid = 0
    for byte in range(13, len(raw), max(1, len(raw) // 50)):
        try:
            frame = parse_frame(_flip(raw, byte * 8 + 3))
        except GbcsError:
            continue
        status = v.verify_mac(frame, RTDS_CHECK_TIME).status
        # a flipped system title names keys nobody holds: unverifiable; anything else: invalid
        assert status in (Status.INVALID, Status.UNVERIFIABLE), (name, byte)
        invalid += status is Status.INVALID
    assert invalid >= 30


def test_tampered_encrypted_block_fails_authentication(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    from gbcs.payload import decode_payload

    raw = vector("ECS68_NA_8F0A_SINGLE_ALERT")
    block = decode_payload(parse_frame(raw)).encrypted_blocks[0]
    tampered = parse_frame(_flip(raw, (block.offset + 20) * 8))
    (d,) = Verifier(keystore).decrypt(tampered, decode_payload(tampered).encrypted_blocks, RTDS_CHECK_TIME)
    assert d.check.status is Status.INVALID and d.plaintext is None


def test_gbcs_kdf_matches_the_worked_examples() -> None:
    # GBCS.md §6.6: GNCA-DLMS 810E alert and CS06 IMMEDIATE_SUCCESS command
    oi = kdf_other_info(ESME, 3, 2000, SUPPLIER)
    assert oi.hex() == "6085740608030000db1234567890a0090300000000000007d090b3d51f30010000"
    assert kdf_other_info(SUPPLIER, 1, 1000, ESME).hex().endswith("90b3d51f300100000901" "00000000000003e8" "00db1234567890a0")


def test_gnca_mac_key_matches_the_worked_example(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    priv = keystore.ka_private_key(SUPPLIER)
    cert = keystore.ka_certificate(ESME)
    assert priv is not None and cert is not None
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    z = priv.exchange(ec.ECDH(), pub)
    assert z.hex().startswith("42da8fad") and z.hex().endswith("6d253e0f")
    key = derive_key(z, kdf_other_info(ESME, 3, 2000, SUPPLIER))
    assert key.hex() == "73761d0b43493dbbaabfe474cac5974b"
    assert parse_frame(vector("GNCA-DLMS_NA_810E_ALERT")).mac == bytes.fromhex("8a4ceecddaa09f42bc73ee41")


def test_missing_ds_certificate_is_reported_unverifiable_not_raised(vector: VectorFn) -> None:
    check = Verifier(MemoryKeyStore()).verify_signature(parse_frame(vector(CS06_8F66)), RTDS_CHECK_TIME)
    assert check.status is Status.UNVERIFIABLE
    assert check.reason == "no DS certificate for 00-DB-12-34-56-78-90-A0"


def test_validity_is_checked_at_the_caller_given_time_never_the_message_time(vector: VectorFn, keystore: DirectoryKeyStore) -> None:
    frame = parse_frame(vector(CS06_8F66))
    v = Verifier(keystore)  # default policy: AT_TIME
    assert v.policy is ValidityPolicy.AT_TIME
    no_time = v.verify_signature(frame)
    assert no_time.status is Status.UNVERIFIABLE and "no checking time" in no_time.reason
    early = v.verify_signature(frame, datetime(2015, 1, 1, tzinfo=UTC))  # the payload's era: before notBefore
    assert early.status is Status.UNVERIFIABLE and "not valid at 2015-01-01" in early.reason
    assert v.verify_signature(frame, RTDS_CHECK_TIME).ok
    # the supplier's organisation certificate expired in 2025: command signatures are then unverifiable
    cmd = parse_frame(vector("CS06_11.3_IMMEDIATE_SUCCESS_COMMAND"))
    assert v.verify_signature(cmd, datetime(2026, 6, 1, tzinfo=UTC)).status is Status.UNVERIFIABLE


# ---------------------------------------------------------------- own keys: build, sign, MAC, verify


def _device_cert(eui: int, key: ec.EllipticCurvePrivateKey, *, signing: bool) -> x509.Certificate:
    serial = b"\x30\x13\x06\x07\x2a\x86\x3a\x00\x01\x02\x03\x04\x08" + eui.to_bytes(8, "big")
    now = datetime(2020, 1, 1, tzinfo=UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.OtherName(HW_MODULE_NAME, serial)]), critical=True)
        .add_extension(
            x509.KeyUsage(signing, False, False, False, not signing, False, False, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )


OwnKeys = tuple[MemoryKeyStore, dict[str, ec.EllipticCurvePrivateKey]]


@pytest.fixture(scope="module")
def own_keys() -> OwnKeys:
    keys = {n: ec.generate_private_key(ec.SECP256R1()) for n in ("esme_ds", "esme_ka", "sup_ka")}
    store = MemoryKeyStore()
    store.add_certificate(_device_cert(ESME, keys["esme_ds"], signing=True), "ds")
    store.add_certificate(_device_cert(ESME, keys["esme_ka"], signing=False), "ka")
    store.add_certificate(_device_cert(SUPPLIER, keys["sup_ka"], signing=False), "ka")
    store.ka_private[SUPPLIER] = keys["sup_ka"]
    return store, keys


def test_generated_device_certificate_is_indexed_by_its_san_eui(own_keys: OwnKeys) -> None:
    store, _ = own_keys
    cert = store.ds_certificate(ESME)
    assert cert is not None and certificate_eui(cert) == ESME


def test_sign_frame_output_verifies_and_round_trips(own_keys: OwnKeys) -> None:
    store, keys = own_keys
    content = bytes.fromhex("3025020300 8F66180F32303330303131353039303030305A020203E93009020100040401 23ABCF".replace(" ", ""))
    apdu = build_general_signing(cra=3, originator_counter=2000, originator=ESME, recipient=SUPPLIER,
                                 message_code=0x00CA, content=content)
    signed = sign_frame(apdu, keys["esme_ds"])
    frame = parse_frame(signed)
    assert frame.content == content and len(signed) == len(apdu) + 65
    v = Verifier(store)
    assert v.verify_signature(frame, RTDS_CHECK_TIME).ok
    assert v.verify_signature(parse_frame(_flip(signed, 8 * 40)), RTDS_CHECK_TIME).status is Status.INVALID
    # re-signing a null-signature APDU replaces the null field
    resigned = sign_frame(apdu + b"\x00", keys["esme_ds"])
    assert resigned[: len(apdu)] == apdu and v.verify_signature(parse_frame(resigned), RTDS_CHECK_TIME).ok


def test_mac_wrap_output_verifies_from_the_recipient_side(own_keys: OwnKeys) -> None:
    store, keys = own_keys
    apdu = build_general_signing(cra=2, originator_counter=7, originator=ESME, recipient=SUPPLIER,
                                 message_code=0x0059, content=b"\xda\x20\x00\x00\x07\x00\x00\x00\x00",
                                 null_signature=True)
    wrapped = mac_wrap(apdu, keys["esme_ka"], keys["sup_ka"].public_key())
    v = Verifier(store)
    check = v.verify_mac(parse_frame(wrapped), RTDS_CHECK_TIME)
    assert check.ok and check.key_eui == SUPPLIER
    assert v.verify_mac(parse_frame(_flip(wrapped, 8 * 20)), RTDS_CHECK_TIME).status is Status.INVALID


#: a critical command signed by the network operator (role 03)
NETWORK_OPERATOR_COMMAND = "CS02bNOByNO_6.15.1_SUCCESS_COMMAND"


@pytest.mark.parametrize(
    ("name", "role", "status"),
    [
        ("CS06_11.3_IMMEDIATE_SUCCESS_COMMAND", 0x02, Status.VALID),  # the supplier's CS06
        (NETWORK_OPERATOR_COMMAND, 0x03, Status.VALID),
        (NETWORK_OPERATOR_COMMAND, 0x02, Status.UNVERIFIABLE),  # good signature, not a supplier
        ("CS06_11.3_IMMEDIATE_SUCCESS_RESPONSE", 0x02, Status.UNVERIFIABLE),  # a device: no role at all
    ],
)
def test_a_signer_without_the_required_role_is_unverifiable_however_good_its_signature(
    vector: VectorFn, keystore: DirectoryKeyStore, name: str, role: int, status: Status
) -> None:
    frame = parse_frame(vector(name))
    v = Verifier(keystore)
    assert v.verify_signature(frame, RTDS_CHECK_TIME).status is Status.VALID  # no role asked: valid
    check = v.verify_signature(frame, RTDS_CHECK_TIME, role=role)
    assert check.status is status, check.reason
    if status is Status.UNVERIFIABLE:
        assert f"role {role:02X} this command needs" in check.reason


def _org_cert(*ous: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou) for ou in ous])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("ous", "code"),
    [
        (("02",), 0x02),
        (("2",), 0x02),
        (("87",), 0x87),
        (("135",), 0x87),
        (("03", "02"), None),
        ((), None),
        (("0x",), None),
    ],
)
def test_certificate_role_code_reads_one_ou_as_hex_pair_or_legacy_decimal(
    ous: tuple[str, ...], code: int | None
) -> None:
    assert certificate_role_code(_org_cert(*ous)) == code
