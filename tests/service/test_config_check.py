"""``duisgw config check``: every bad value is a listed problem (exit 2, never a traceback), and its "ok"
means ``duisgw serve`` accepts the file (the same validation, :func:`load_serve_config`)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.service.config import ConfigError, ServiceConfig, config_from_mapping
from gateway.service.serve import engine_problems, load_serve_config, pipeline_problems

PASSTHROUGH = 'mode = "passthrough"\n'


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``duisgw config check`` on ``text``: exit code, stdout, stderr."""
    f = tmp_path / "gw.toml"
    f.write_text(text, encoding="utf-8")
    code = main(["config", "check", str(f)])
    out = capsys.readouterr()
    return code, out.out, out.err


def problems_of(data: dict[str, Any]) -> list[str]:
    """Every problem ``duisgw serve`` finds in a parsed file (service, engine, pipeline rules)."""
    try:
        config_from_mapping(data, engine_validator=engine_problems, service_validator=pipeline_problems)
    except ConfigError as exc:
        return exc.problems
    return []


# ------------------------------------------------------------------ defect: tracebacks instead of problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[destinations]]\nname = "d"\nurl = "http://[::1/x"\n', "destinations[0].url: not a valid URL"),
        ('[state]\nredis_url = "redis://[::1"\n', "state.redis_url: not a valid URL"),
        ('[state]\nredis_url = "redis://127.0.0.1:99999/0"\n', "state.redis_url: bad port"),
        ("[engine]\nhold_limit = 1e400\n", "engine.hold_limit: "),
        ('[engine]\nhold_limit = "99999999999d"\n', "engine.hold_limit: out of range"),
        ("[engine]\nwindow_before = 1e300\n", "engine.window_before: out of range"),
    ],
    ids=["ipv6-destination-url", "ipv6-redis-url", "redis-port", "engine-inf", "engine-days", "engine-huge"],
)
def test_config_check_lists_unparsable_urls_and_out_of_range_durations_instead_of_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    code, _out, err = check(tmp_path, PASSTHROUGH + text, capsys)
    assert code == 2
    assert f"duisgw config: {expected}" in err


def test_engine_problems_turns_an_overflowing_duration_into_a_problem() -> None:
    assert engine_problems({"hold_limit": float("inf")}) == [
        "hold_limit: out of range (cannot convert float infinity to integer)"
    ]
    [problem] = engine_problems({"hold_limit": "99999999999d"})
    assert problem.startswith("hold_limit: out of range")


# ------------------------------------------------------------------ defect: check accepted what serve refuses


def test_config_check_refuses_the_default_file_as_serve_does_until_the_pipeline_inputs_are_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "default"]) == 0
    text = capsys.readouterr().out
    code, out, err = check(tmp_path, text, capsys)
    assert code == 2 and "ok" not in out
    assert err.splitlines() == [
        "duisgw config: pipeline.certificates: required in pipeline mode",
        "duisgw config: pipeline.gbcs_keys: required in pipeline mode",
    ]
    (tmp_path / "smki").mkdir()
    (tmp_path / "keys").mkdir()
    text = text.replace('certificates = ""', 'certificates = "smki"').replace('gbcs_keys = ""', 'gbcs_keys = "keys"')
    code, out, err = check(tmp_path, text, capsys)
    assert (code, err) == (0, "")
    assert "ok (checked what `duisgw serve` checks before it starts" in out
    load_serve_config(tmp_path / "gw.toml")  # and serve's loader agrees


@pytest.mark.parametrize(
    "text",
    [
        'mode = "pipeline"\n',
        PASSTHROUGH,
        PASSTHROUGH + "[server]\nport = 9108\n",
        PASSTHROUGH + '[[destinations]]\nname = "d"\nurl = "http://127.0.0.1:99999/x"\n',
        PASSTHROUGH + "tick_interval = inf\n",
        PASSTHROUGH + '[mqtt]\nobserve_topics = ["a/#/b"]\n',
    ],
)
def test_config_check_says_ok_exactly_when_serve_accepts_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    code, _out, err = check(tmp_path, text, capsys)
    try:
        load_serve_config(tmp_path / "gw.toml")
    except ConfigError as exc:
        assert code == 2
        assert err.splitlines() == [f"duisgw config: {p}" for p in exc.problems]
    else:
        assert code == 0


SCHEME = " (http:// or https://, lower case)"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:99999/x", "bad port (Port out of range 0-65535)"),
        ("http://127.0.0.1:0/x", "bad port (must be 1..65535)"),
        ("http://127.0.0.1:http/x", "bad port (Port could not be cast to integer value as 'http')"),
        ("ftp://dno.example/x", "an http(s) URL"+ SCHEME),
        ("HTTPS://dno.example/x", "an http(s) URL"+ SCHEME),
        ("mailto:dno@example.org", "an http(s) URL"+ SCHEME),
        ("http:///x", "an http(s) URL with a host"),
        ("http://exa mple/x", "host 'exa mple': no spaces or control characters"),
    ],
)
def test_a_destination_url_needs_a_lower_case_http_scheme_a_host_and_a_port_in_range(url: str, expected: str) -> None:
    problems = problems_of({"mode": "passthrough", "destinations": [{"name": "d", "url": url}]})
    assert [p for p in problems if p.startswith("destinations[0].url: ")] == [f"destinations[0].url: {expected}"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/duis", "https://[::1]:8443/x", "https://dno-a.example/duis"])
def test_a_well_formed_destination_url_is_accepted(url: str) -> None:
    assert problems_of({"mode": "passthrough", "destinations": [{"name": "d", "url": url}]}) == []


@pytest.mark.parametrize(
    ("server", "admin", "clash"),
    [
        ({"port": 9108}, {}, True),
        ({"port": 8000}, {"port": 8000, "host": "127.0.0.1"}, True),
        ({"port": 8000, "host": "0.0.0.0"}, {"port": 8000}, True),
        ({"port": 8000}, {"port": 8000, "host": "::"}, True),
        ({"port": 8000}, {"port": 8000, "host": "127.0.0.2"}, False),
        ({"port": 9108}, {"enabled": False}, False),
        ({"port": 0}, {"port": 0}, False),
    ],
)
def test_the_admin_listener_cannot_share_the_ingress_port_on_the_same_host(
    server: dict[str, Any], admin: dict[str, Any], clash: bool
) -> None:
    problems = problems_of({"mode": "passthrough", "server": server, "admin": admin})
    assert any(p.startswith("admin.port: ") and "also server.port" in p for p in problems) is clash


def _float_options(cls: type[Any] = ServiceConfig, prefix: str = "") -> list[str]:
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _float_options(tp, f"{prefix}{f.name}.")
        elif tp is float:
            out.append(f"{prefix}{f.name}")
    return out


def _nested(path: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"mode": "passthrough"}
    *tables, name = path.split(".")
    node = data
    for t in tables:
        node = node.setdefault(t, {})
    node[name] = value
    return data


FLOAT_OPTIONS = _float_options()


def test_every_float_option_is_covered_by_the_finiteness_check() -> None:
    for path in ("tick_interval", "server.read_timeout", "outbox.jitter", "mqtt.reconnect_interval", "state.lease"):
        assert path in FLOAT_OPTIONS


@pytest.mark.parametrize("path", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=["inf", "-inf", "nan"])
def test_a_non_finite_number_is_a_problem_for_every_float_option(path: str, value: float) -> None:
    problems = problems_of(_nested(path, value))
    assert problems == [f"{path}: must be a finite number, got {value!r}"]


@pytest.mark.parametrize(
    "path",
    [
        "tick_interval",
        "server.keepalive_timeout",
        "server.read_timeout",
        "outbox.backoff_initial",
        "outbox.request_timeout",
        "outbox.poll_interval",
        "mqtt.reconnect_interval",
        "mqtt.publish_timeout",
        "state.lease",
        "state.wait_timeout",
    ],
)
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_an_interval_or_timeout_that_must_elapse_cannot_be_zero_or_negative(path: str, value: float) -> None:
    assert problems_of(_nested(path, value)) == [f"{path}: must be > 0"]


# ------------------------------------------------------------------ MQTT topics


@pytest.mark.parametrize(
    "topic", ["#", "a/#", "+", "a/+/b", "+/+", "/", "a//b", "$SYS/#", "$share/gw/dsp/observe/#", "dsp/é/#"]
)
def test_a_valid_observe_topic_filter_is_accepted(topic: str) -> None:
    assert problems_of({"mode": "passthrough", "mqtt": {"observe_topics": [topic]}}) == []


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("bad/#/x", "'#' must be a whole level and the last one"),
        ("a#", "'#' must be a whole level and the last one"),
        ("a/b#", "'#' must be a whole level and the last one"),
        ("#/", "'#' must be a whole level and the last one"),
        ("a+/b", "'+' must be a whole level"),
        ("a/+b", "'+' must be a whole level"),
        ("", "empty topic"),
        ("a\x00b", "NUL character in topic"),
        ("a\x1fb", "control character in topic"),
        ("x" * 65536, "longer than 65535 bytes (65536)"),
        ("é" * 32768, "longer than 65535 bytes (65536)"),
        ("$share//a", "a shared subscription is"),
        ("$share/g", "a shared subscription is"),
        ("$share/g+/a", "a shared subscription is"),
        ("$share/g/a/#/b", "'#' must be a whole level and the last one"),
    ],
)
def test_an_invalid_observe_topic_filter_is_a_problem(topic: str, reason: str) -> None:
    problems = problems_of({"mode": "passthrough", "mqtt": {"observe_topics": ["dsp/observe/#", topic]}})
    assert len(problems) == 1
    assert problems[0].startswith(f"mqtt.observe_topics[1]: {reason}")


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("x/{destination}/#", "a topic name cannot contain the wildcards"),
        ("x/+/{destination}", "a topic name cannot contain the wildcards"),
        ("{destination}#", "a topic name cannot contain the wildcards"),
        ("$dno/{destination}", "a topic name cannot start with '$'"),
        ("a\x00/{destination}", "NUL character in topic"),
        ("x" * 65530 + "/{destination}", "longer than 65535 bytes"),
        ("duisgw/dno", "must contain {destination}"),
    ],
)
def test_an_invalid_publish_topic_template_is_a_problem(template: str, reason: str) -> None:
    data = {
        "mode": "passthrough",
        "mqtt": {"enabled": True, "publish": True, "publish_topic": template},
        "destinations": [{"name": "dno-a"}],
    }
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith(f"mqtt.publish_topic: {reason}")


def test_the_publish_topic_is_checked_with_the_longest_destination_name() -> None:
    template = "x" * 65520 + "/{destination}"
    dest = {"name": "a", "url": "http://h/"}
    short = {"mode": "passthrough", "mqtt": {"publish_topic": template}, "destinations": [dest]}
    assert problems_of(short) == []
    long = {**short, "destinations": [{**dest, "name": "a" * 20}]}
    assert problems_of(long)[0].startswith("mqtt.publish_topic: longer than 65535 bytes")


# ------------------------------------------------------------------ defect: problems hidden by a prefix match


def test_an_unknown_option_does_not_hide_the_problems_of_an_option_whose_name_it_prefixes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = check(tmp_path, PASSTHROUGH + "s = 1\n[server]\nport = 99999\n", capsys)
    assert code == 2
    assert err.splitlines() == ["duisgw config: s: unknown option", "duisgw config: server.port: must be 0..65535"]


def test_a_wrongly_typed_option_still_hides_the_rules_on_its_placeholder_and_on_the_options_inside_it() -> None:
    # mqtt.publish_topic is "" after its type error: "must contain {destination}" would be noise
    assert problems_of({"mode": "passthrough", "mqtt": {"publish_topic": 5}}) == [
        "mqtt.publish_topic: expected a string, got 5"
    ]
    # destinations[0] is a placeholder table: its empty name and missing url are not reported
    assert problems_of({"mode": "passthrough", "destinations": [1]}) == ["destinations[0]: expected a table"]
    # but a sibling whose name extends the flagged one is still checked
    problems = problems_of({"mode": "passthrough", "server": {"port": "x"}, "admin": {"port": 70000}})
    assert problems == ["server.port: expected an integer, got 'x'", "admin.port: must be 0..65535"]


def test_every_problem_is_listed_together_with_the_pipeline_requirements(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = check(tmp_path, "tick_interval = nan\n", capsys)
    assert code == 2
    assert err.splitlines() == [
        "duisgw config: tick_interval: must be a finite number, got nan",
        "duisgw config: pipeline.certificates: required in pipeline mode",
        "duisgw config: pipeline.gbcs_keys: required in pipeline mode",
    ]


# ------------------------------------------------------------------ [pipeline] trust_expired


def test_trust_expired_accepts_issuer_and_serial_entries_and_bare_serials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = '["CN=Z1,OU=07#20315062944123339095836004026371736578", "OU=07, cn=z1 #12", "1234"]'
    code, out, err = check(tmp_path, f"{PASSTHROUGH}[pipeline]\ntrust_expired = {entries}\n", capsys)
    assert (code, err) == (0, "") and ": ok" in out


def test_a_malformed_trust_expired_entry_is_a_listed_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # '²' passed the old check (str.isdigit) and then made serve fail with a ValueError from int()
    entries = '["CN=Z1,OU=07#12x", "Z1#12", "\u00b2", "#5", "1234"]'
    code, _out, err = check(tmp_path, f"{PASSTHROUGH}[pipeline]\ntrust_expired = {entries}\n", capsys)
    assert code == 2
    lines = err.splitlines()
    assert [ln.split(": ", 2)[1] for ln in lines] == [f"pipeline.trust_expired[{i}]" for i in range(4)]
    assert "expected a decimal certificate serial or ISSUER#SERIAL" in lines[0]
    assert "issuer is not a distinguished name" in lines[1]
    assert "expected a decimal certificate serial" in lines[2]
    assert "empty issuer" in lines[3]


# ------------------------------------------------------------------ the MQTT password file is read as the link reads it


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe p\x00w\x00\n", "not UTF-8"),  # a UTF-16 export: the link's read_text raised on every try
        (b"", "empty"),  # the link would connect with an empty password
        (b"\n\nsecret\n", "first line is empty"),
    ],
    ids=["not-utf8", "empty", "blank-first-line"],
)
def test_an_mqtt_password_file_the_link_could_not_use_is_a_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    pw = tmp_path / "mqtt.pw"
    pw.write_bytes(content)
    code, _out, err = check(
        tmp_path,
        PASSTHROUGH + '[[destinations]]\nname = "dno-a"\nurl = "http://127.0.0.1:1/"\n'
        f'[mqtt]\nenabled = true\nusername = "gw"\npassword_file = "{pw}"\n',
        capsys,
    )
    assert code == 2
    assert f"mqtt.password_file: {reason}" in err
    assert "Traceback" not in err


def test_an_mqtt_password_file_with_a_password_on_its_first_line_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pw = tmp_path / "mqtt.pw"
    pw.write_text("s3cret\n", encoding="utf-8")
    code, _out, err = check(
        tmp_path,
        PASSTHROUGH + '[[destinations]]\nname = "dno-a"\nurl = "http://127.0.0.1:1/"\n'
        f'[mqtt]\nenabled = true\nusername = "gw"\npassword_file = "{pw}"\n',
        capsys,
    )
    assert (code, err) == (0, "")
