"""Lexical rules: identifiers, xs:dateTime policy, hexBinary, base64, and cross-field warnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cli import main
from gateway.duis.decode import decode
from gateway.duis.errors import InvalidField
from gateway.duis.model import ActivateFirmware, DCCAlertMessage, Response
from gateway.duis.values import (
    DateTimePolicy,
    MessageId,
    format_datetime,
    parse_datetime,
    parse_hex,
    parse_int,
)

SR = "http://www.dccinterface.co.uk/ServiceUserGateway"


def test_message_id_normalises_case_and_white_space() -> None:
    mid = MessageId.parse("  00-db-12-34-56-78-00-04:00-DB-12-34-56-78-90-A0:1000\n")
    assert mid == MessageId(0x00DB123456780004, 0x00DB1234567890A0, 1000)
    assert str(mid) == "00-DB-12-34-56-78-00-04:00-DB-12-34-56-78-90-A0:1000"


@pytest.mark.parametrize(
    "text",
    [
        "90-B3-D5-1F-30-01-00-00:00-07-81-D7-00-00-36-CE::1000",
        "90-B3-D5-1F-30-01-00-00:00-07-81-D7-00-00-36-CE:01001",
        "90-B3-D5-1F-30-01-00-00:00-07-81-D7-00-00-36-CE:18446744073709551616",
        "90-B3-D5-1F-30-01-00-00:00-07-81-D7-00-00-36-CE:-1",
        "90-B3-D5-1F-30-01-00:00-07-81-D7-00-00-36-CE:1",
        "",
    ],
)
def test_bad_message_ids_are_invalid_field(text: str) -> None:
    with pytest.raises(InvalidField):
        MessageId.parse(text)


def test_counter_limits_are_the_uint64_range() -> None:
    assert MessageId.parse("00-00-00-00-00-00-00-00:FF-FF-FF-FF-FF-FF-FF-FF:0").counter == 0
    top = MessageId.parse("00-00-00-00-00-00-00-00:00-00-00-00-00-00-00-00:18446744073709551615")
    assert top.counter == 2**64 - 1
    with pytest.raises(ValueError):
        MessageId(0, 0, 2**64)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
@settings(max_examples=100, deadline=None)
def test_message_id_text_round_trip(o: int, t: int, c: int) -> None:
    mid = MessageId(o, t, c)
    assert MessageId.parse(str(mid)) == mid


def test_naive_datetime_is_utc_with_a_warning_by_default_and_rejected_by_policy() -> None:
    warnings: list[str] = []
    dt = parse_datetime("2026-01-15T09:00:05", "StartDateTime", DateTimePolicy.NAIVE_IS_UTC, warnings)
    assert dt == datetime(2026, 1, 15, 9, 0, 5, tzinfo=UTC)
    assert warnings and "no time zone" in warnings[0]
    with pytest.raises(InvalidField, match="time zone"):
        parse_datetime("2026-01-15T09:00:05", "StartDateTime", DateTimePolicy.REJECT_NAIVE, [])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-15T09:00:00.00Z", datetime(2030, 1, 15, 9, tzinfo=UTC)),
        ("2022-06-16T16:34:15.844Z", datetime(2022, 6, 16, 16, 34, 15, 844000, tzinfo=UTC)),
        ("2022-06-16T16:34:15.1234567Z", datetime(2022, 6, 16, 16, 34, 15, 123456, tzinfo=UTC)),
        ("2026-03-29T02:30:00+01:00", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
        ("2026-03-29T02:30:00-00:00", datetime(2026, 3, 29, 2, 30, tzinfo=UTC)),
        ("3000-12-31T00:00:00.00Z", datetime(3000, 12, 31, tzinfo=UTC)),
        ("2026-12-31T24:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_datetime_lexical_forms(text: str, expected: datetime) -> None:
    assert parse_datetime(text, "x", DateTimePolicy.REJECT_NAIVE, None) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T00:00:00Z",
        "2026-01-15 09:00:00Z",
        "2026-01-15T09:00Z",
        "2026-01-15T25:00:00Z",
        "2026-01-15T09:00:00+15:00",
    ],
)
def test_bad_datetimes_are_invalid_field(text: str) -> None:
    with pytest.raises(InvalidField):
        parse_datetime(text, "x", DateTimePolicy.NAIVE_IS_UTC, [])


def test_format_datetime_keeps_the_offset_and_drops_zero_fraction() -> None:
    assert format_datetime(datetime(2026, 1, 15, 9, tzinfo=UTC)) == "2026-01-15T09:00:00Z"
    tz = timezone(timedelta(hours=-5, minutes=-30))
    assert (
        format_datetime(datetime(2026, 1, 15, 9, 0, 0, 250000, tzinfo=tz)) == "2026-01-15T09:00:00.25-05:30"
    )
    with pytest.raises(ValueError):
        format_datetime(datetime(2026, 1, 15))


def test_hex_binary_compares_as_octets() -> None:
    assert parse_hex("8f66", "x") == parse_hex(" 8F66 ", "x") == b"\x8f\x66"
    for bad in ("8F6", "8F 66", "XYZW"):
        with pytest.raises(InvalidField):
            parse_hex(bad, "x")


def _request(sr: str, srv: str, cv: int, body: str) -> bytes:
    return (
        f'<sr:Request xmlns:sr="{SR}" schemaVersion="5.4"><sr:Header>'
        "<sr:RequestID>90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1000</sr:RequestID>"
        f"<sr:CommandVariant>{cv}</sr:CommandVariant><sr:ServiceReference>{sr}</sr:ServiceReference>"
        f"<sr:ServiceReferenceVariant>{srv}</sr:ServiceReferenceVariant></sr:Header><sr:Body>{body}</sr:Body></sr:Request>"
    ).encode()


AF = (
    "<sr:ActivateFirmware><sr:ExecutionDateTime>{}</sr:ExecutionDateTime><sr:FirmwareHash>"
    + "AB" * 32
    + "</sr:FirmwareHash></sr:ActivateFirmware>"
)


def test_service_reference_variant_of_another_sr_is_a_warning_not_an_error() -> None:
    doc = decode(_request("11.3", "11.2", 4, AF.format("2030-01-15T09:00:00Z")))
    assert any("does not belong to ServiceReference '11.3'" in w for w in doc.warnings)


def test_command_variant_not_valid_for_the_srv_is_a_warning() -> None:
    doc = decode(_request("11.3", "11.3", 9, AF.format("2030-01-15T09:00:00Z")))
    assert any("CommandVariant 9 is not valid for 11.3" in w for w in doc.warnings)
    assert not decode(_request("11.3", "11.3", 4, AF.format("2030-01-15T09:00:00Z"))).warnings


def test_naive_execution_datetime_is_flagged_on_the_model() -> None:
    doc = decode(_request("11.3", "11.3", 4, AF.format("2030-01-15T09:00:00")))
    assert isinstance(doc.body, ActivateFirmware)
    assert doc.body.execution_datetime == datetime(2030, 1, 15, 9, tzinfo=UTC)
    assert any("ExecutionDateTime" in w and "UTC" in w for w in doc.warnings)
    with pytest.raises(InvalidField):
        decode(
            _request("11.3", "11.3", 4, AF.format("2030-01-15T09:00:00")), policy=DateTimePolicy.REJECT_NAIVE
        )


def test_cancellation_sentinel_is_recognised_in_any_zone() -> None:
    for text in ("3000-12-31T00:00:00.00Z", "3000-12-31T00:00:00+01:00"):
        doc = decode(_request("11.3", "11.3", 4, AF.format(text)))
        assert isinstance(doc.body, ActivateFirmware)
        assert doc.body.is_cancellation and not doc.body.is_future_dated


def _alert(code: str, child: str) -> bytes:
    return (
        f'<sr:Response xmlns:sr="{SR}" schemaVersion="5.4"><sr:Header><sr:ResponseCode>I0</sr:ResponseCode>'
        "<sr:ResponseDateTime>2026-01-15T09:04:12Z</sr:ResponseDateTime></sr:Header><sr:Body><sr:DCCAlertMessage>"
        f"<sr:DCCAlertCode>{code}</sr:DCCAlertCode><sr:DCCAlert>{child}</sr:DCCAlert></sr:DCCAlertMessage></sr:Body></sr:Response>"
    ).encode()


def _poe(mpxn: str) -> str:
    return (
        "<sr:PowerOutageEvent><sr:CommsHubDeviceID>88-73-84-90-6a-10-02-db</sr:CommsHubDeviceID>"
        f"<sr:StartDateTime>2026-01-15T09:00:05Z</sr:StartDateTime><sr:MPxN>{mpxn}</sr:MPxN></sr:PowerOutageEvent>"
    )


def test_ad1_with_a_valid_thirteen_digit_mpan_has_no_warning() -> None:
    doc = decode(_alert("AD1", _poe("1030006718997")))  # a valid core (tests of the public mpan package)
    assert isinstance(doc, Response) and isinstance(doc.body, DCCAlertMessage)
    assert doc.warnings == ()
    assert doc.body.alert.comms_hub_device_id == 0x887384906A1002DB  # type: ignore[union-attr]
    assert doc.kind == "DCCAlertMessage.AD1"


def test_ad1_mpxn_that_is_not_thirteen_digits_is_a_warning() -> None:
    assert any("13-digit" in w for w in decode(_alert("AD1", _poe("12345"))).warnings)
    assert any("13-digit" in w for w in decode(_alert("AD1", _poe("123456789012X"))).warnings)


def test_ad1_mpxn_with_a_wrong_check_digit_decodes_without_a_model_warning_and_the_decode_report_names_it() -> None:
    """The decoder checks the MPxN's form only (its hot path pays nothing for the check digit); the engine
    and the inventory import judge the check digit, and ``duisgw decode``'s report names it for the reader."""
    from gateway.cli.decode import model_json

    # 2499999999990: "Bad checksum" in the tests of the public mpan package; its check digit is 1 (2366 mod 11 mod 10)
    doc = decode(_alert("AD1", _poe("2499999999990")))
    assert isinstance(doc, Response) and isinstance(doc.body, DCCAlertMessage)
    assert doc.warnings == ()
    assert doc.body.alert.mpxn == "2499999999990"  # type: ignore[union-attr]
    assert model_json(doc)["warnings"] == [
        "PowerOutageEvent MPxN '2499999999990' fails the MPAN check digit (expected 1, not 0)"
    ]
    assert model_json(decode(_alert("AD1", _poe("1030006718997"))))["warnings"] == []
    # a form problem is the model's warning, once, and no check-digit line is added to it
    assert model_json(decode(_alert("AD1", _poe("123456789012X"))))["warnings"] == [
        "PowerOutageEvent MPxN '123456789012X' is not a 13-digit MPAN"
    ]


def test_ad1_mpxn_that_is_not_digits_gets_only_the_shape_warning() -> None:
    assert decode(_alert("AD1", _poe("123456789012X"))).warnings == (
        "PowerOutageEvent MPxN '123456789012X' is not a 13-digit MPAN",
    )


def test_dcc_alert_code_and_child_disagreement_is_a_warning_both_ways() -> None:
    assert any("not AD1" in w for w in decode(_alert("N24", _poe("1234567890123"))).warnings)
    other = "<sr:CommsHubFirmwareActivation><sr:DeviceID>00-DB-12-34-56-78-90-A2</sr:DeviceID><sr:FirmwareVersion>1</sr:FirmwareVersion></sr:CommsHubFirmwareActivation>"
    assert any("not PowerOutageEvent" in w for w in decode(_alert("AD1", other)).warnings)


# --------------------------------------------------------------------------- very long integers
# (Python's int() raises ValueError above 4,300 digits: such values must be InvalidField)


@pytest.mark.parametrize(
    "text",
    ["4" * 5000, "-" + "1" * 5000, "+" + "9" * 4301, "1" * 41, "0" * 5000 + "1" * 41],
    ids=["5000", "negative", "4301", "41", "zeros-then-41"],
)
def test_an_integer_of_thousands_of_digits_is_out_of_range_not_a_crash(text: str) -> None:
    with pytest.raises(InvalidField, match="out of range"):
        parse_int(text, "CommandVariant", 1, 9)


def test_leading_zeros_do_not_count_towards_the_digit_limit() -> None:
    assert parse_int("0" * 5000 + "7", "CommandVariant", 1, 9) == 7
    assert parse_int("+" + "0" * 5000, "ThrottledAlertCount", 0, 10) == 0


@given(st.from_regex(r"\A[+-]?[0-9]{1,60}\Z"), st.integers(0, 6000))
@settings(max_examples=300, deadline=None)
def test_parse_int_is_int_in_range_or_invalid_field(digits: str, zeros: int) -> None:
    text = digits[0] + "0" * zeros + digits[1:] if digits[0] in "+-" else "0" * zeros + digits
    try:
        v = parse_int(text, "UPRN", 0, 999_999_999_999)
    except InvalidField:
        assert not 0 <= int(digits) <= 999_999_999_999
    else:
        assert v == int(digits)


@pytest.mark.parametrize(
    "year", ["1" * 5000, "-" + "2" * 5000, "1" * 4301, "10000", "00001", "0000", "-0001"]
)
def test_a_year_outside_0001_9999_is_invalid_field_however_long(year: str) -> None:
    with pytest.raises(InvalidField, match="year out of the supported range"):
        parse_datetime(f"{year}-01-15T09:04:12Z", "ResponseDateTime", DateTimePolicy.NAIVE_IS_UTC, [])


def test_huge_integers_in_a_message_are_invalid_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = (
        f'<sr:Response xmlns:sr="{SR}" schemaVersion="5.4"><sr:Header><sr:ResponseCode>I0</sr:ResponseCode>'
        "<sr:ResponseDateTime>{when}</sr:ResponseDateTime></sr:Header><sr:Body>{body}</sr:Body></sr:Response>"
    )
    alert = (
        "<sr:DeviceAlertMessage><sr:AlertCode>8F36</sr:AlertCode><sr:ThrottledAlertSequenceId>{n}"
        "</sr:ThrottledAlertSequenceId><sr:GBCSPayload>AAAA</sr:GBCSPayload></sr:DeviceAlertMessage>"
    )
    docs = [
        head.format(when="1" * 5000 + "-01-15T09:04:12Z", body=alert.format(n=1)),
        head.format(when="2026-01-15T09:04:12Z", body=alert.format(n="1" * 5000)),
        (
            f'<sr:Request xmlns:sr="{SR}" schemaVersion="5.4"><sr:Header><sr:RequestID>'
            "90-B3-D5-1F-30-01-00-00:00-DB-12-34-56-78-90-A0:1000</sr:RequestID>"
            f"<sr:CommandVariant>{'4' * 5000}</sr:CommandVariant><sr:ServiceReference>8.2</sr:ServiceReference>"
            "<sr:ServiceReferenceVariant>8.2</sr:ServiceReferenceVariant></sr:Header><sr:Body><sr:ReadInventory>"
            f"<sr:UPRN>{'1' * 5000}</sr:UPRN></sr:ReadInventory></sr:Body></sr:Request>"
        ),
    ]
    for i, doc in enumerate(docs):
        with pytest.raises(InvalidField):
            decode(doc.encode())
        path = tmp_path / f"big{i}.xml"
        path.write_text(doc)
        assert main(["decode", str(path)]) == 2
        err = capsys.readouterr().err
        assert "invalid_field" in err and err.count("\n") == 1


def test_the_decode_report_names_an_esme_import_mpxn_that_is_no_mpan_and_leaves_a_gas_meters_mprn_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An 8.2 response: the engine learns an ESME's ImportMPxN only when it is a 13-digit MPAN core with
    its check digit; ``duisgw decode`` names the ones it does not learn. A GSME's ImportMPxN is its MPRN
    (6 to 10 digits): not an MPAN, not judged."""
    import json

    from gateway.duis.encode import encode
    from gateway.duis.model import DSPInventory, InventoryDevice, ResponseHeader, ResponseMessage
    from gateway.duis.values import MessageId

    esme_ok, esme_short, esme_bad, gsme = (0x00DB0000000000A0 + i for i in range(4))
    devices = DSPInventory(
        tuple(
            InventoryDevice(eui, dtype, "Landis+Gyr", "E470", "Commissioned", import_mpxn=mpxn)
            for eui, dtype, mpxn in (
                (esme_ok, "ESME", "1030006718997"),
                (esme_short, "ESME", "1234567890"),
                (esme_bad, "ESME", "2499999999990"),
                (gsme, "GSME", "1234567890"),
                (0x00DB0000000000C2, "CHF", None),
            )
        )
    )
    header = ResponseHeader(
        "I0",
        datetime(2026, 1, 15, 9, 4, 12, tzinfo=UTC),
        request_id=MessageId(0x90B3D51F30010000, 0x90B3D51F30000002, 7),
    )
    path = tmp_path / "inventory.xml"
    path.write_bytes(encode(Response(header, ResponseMessage("8.2", "8.2", devices))))
    assert main(["decode", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["warnings"] == [
        "ESME 00-DB-00-00-00-00-00-A1 ImportMPxN '1234567890' is not a 13-digit MPAN: not learned",
        "ESME 00-DB-00-00-00-00-00-A2 ImportMPxN '2499999999990' fails the MPAN check digit (expected 1, not 0): "
        "not learned",
    ]
