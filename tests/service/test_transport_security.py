"""Transport security: what would cross the network unprotected is refused by ``duisgw config check`` and
at the start of ``duisgw serve`` (exit 2, a named ``OPTION: CODE: detail`` problem) unless its section
opts out, and a loopback host needs no opt-out:

* the admin listener on a host that is not a loopback address without ``[admin] token_file``
  (``unauthenticated_admin``; opt-out ``allow_unauthenticated``);
* a plain-HTTP ingress on such a host (``plain_http_ingress``; opt-out ``[server] allow_plain_http``);
* an MQTT password without TLS, or a destination url's user name and password over ``http://``, to such
  a host (``plaintext_credentials``; opt-out ``allow_plaintext_credentials`` of that section).

With a token the admin listener's control endpoints answer 401 (``WWW-Authenticate: Bearer``) without it
or with another one, counted in ``duisgw_admin_auth_failures_total`` and logged without the token (at most
one line a minute, the next logged line counting the refusals left out), while ``/metrics``, ``/healthz``
and ``/readyz`` stay open."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path

import aiohttp
import pytest
from servicekit import DNO_USER, Pki, Receiver, make_lab, pipeline_config, running, service_config

from gateway.cli import main
from gateway.service.app import ADMIN_REFUSAL_LOG_INTERVAL, Service, admin_auth_headers
from gateway.service.config import (
    AdminConfig,
    ConfigError,
    DestinationConfig,
    MqttConfig,
    ServerConfig,
    StateConfig,
    is_loopback_host,
    read_admin_token,
    transport_security_problems,
    transport_security_warnings,
)
from gateway.service.serve import build_gateway, make_service

PASSTHROUGH = 'mode = "passthrough"\n'
TOKEN = "0123456789abcdef0123456789abcdef"


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``duisgw config check`` on ``text``: exit code and the problems listed on stderr."""
    f = tmp_path / "gw.toml"
    f.write_text(text, encoding="utf-8")
    code = main(["config", "check", "-q", str(f)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line.removeprefix("duisgw config: ") for line in err.splitlines()]


def token_file(tmp_path: Path, content: bytes = TOKEN.encode() + b"\n", name: str = "admin.token") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


# ------------------------------------------------------------------ what counts as loopback


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LocalHost", "::ffff:127.0.0.1"]
)
def test_the_loopback_addresses_and_localhost_are_loopback(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    ["", "0.0.0.0", "::", "*", "10.1.2.3", "::ffff:10.1.2.3", "gw.example", "localhost.example", "128.0.0.1"],
)
def test_wildcards_other_addresses_and_names_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


# ------------------------------------------------------------------ [admin]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gw.example"])
def test_an_admin_listener_off_loopback_without_a_token_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    code, problems = check(tmp_path, PASSTHROUGH + f'[admin]\nhost = "{host}"\n', capsys)
    assert code == 2
    assert len(problems) == 1
    assert problems[0].startswith(f"admin.host: unauthenticated_admin: {host!r} is not a loopback address")
    assert "set token_file (with [admin.tls]), client_ca_file, or allow_unauthenticated = true" in problems[0]


@pytest.mark.parametrize(
    "admin",
    [
        'host = "127.0.0.1"\n',
        'host = "::1"\n',
        'host = "localhost"\n',
        'host = "0.0.0.0"\nallow_unauthenticated = true\n',
        'host = "0.0.0.0"\nenabled = false\n',
        'host = "0.0.0.0"\ntoken_file = "admin.token"\nallow_plaintext_credentials = true\n',
    ],
    ids=["ipv4-loopback", "ipv6-loopback", "localhost", "opt-out", "disabled", "token-in-clear-opt-out"],
)
def test_an_admin_listener_on_loopback_with_a_token_or_with_the_opt_out_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], admin: str
) -> None:
    token_file(tmp_path)
    assert check(tmp_path, PASSTHROUGH + "[admin]\n" + admin, capsys) == (0, [])


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe0\x001\x002\x00\n", "not UTF-8"),
        (b"", "empty"),
        (b"\n" + TOKEN.encode() + b"\n", "first line is empty"),
        (b"0123456789abcde\n", "the token is shorter than 16 characters"),
        (b"0123456789 abcdef0123\n", "the token must be visible ASCII characters without spaces"),
        (b" 0123456789abcdef0123\n", "the token must be visible ASCII characters without spaces"),
        (
            "0123456789abcdef\u00e9".encode() + b"\n",
            "the token must be visible ASCII characters without spaces",
        ),
    ],
    ids=["not-utf8", "empty", "blank-first-line", "short", "inner-space", "leading-space", "non-ascii"],
)
def test_a_token_file_that_cannot_be_used_is_a_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, reason: str
) -> None:
    token_file(tmp_path, content)
    code, problems = check(tmp_path, PASSTHROUGH + '[admin]\ntoken_file = "admin.token"\n', capsys)
    assert code == 2
    assert problems == [f"admin.token_file: {reason}: admin.token"]


def test_a_missing_or_unreadable_token_file_is_a_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, problems = check(tmp_path, PASSTHROUGH + '[admin]\ntoken_file = "nowhere.token"\n', capsys)
    assert (code, problems) == (2, ["admin.token_file: file not found: nowhere.token"])
    (tmp_path / "dir.token").mkdir()
    with pytest.raises(ConfigError) as raised:
        read_admin_token(AdminConfig(token_file="dir.token"), tmp_path)
    assert raised.value.problems[0].startswith("admin.token_file: unreadable (")


def test_the_token_is_the_first_line_of_its_file_resolved_against_the_config_folder(tmp_path: Path) -> None:
    token_file(tmp_path, TOKEN.encode() + b"\r\nsecond line\n")
    assert read_admin_token(AdminConfig(token_file="admin.token"), tmp_path) == TOKEN
    assert read_admin_token(AdminConfig(), tmp_path) is None
    assert admin_auth_headers(AdminConfig(token_file="admin.token"), tmp_path) == {
        "Authorization": f"Bearer {TOKEN}"
    }
    assert admin_auth_headers(AdminConfig(), tmp_path) == {}


# ------------------------------------------------------------------ [server]: plain-HTTP ingress


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.0.2.7"])
def test_a_plain_http_ingress_off_loopback_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    code, problems = check(tmp_path, PASSTHROUGH + f'[server]\nhost = "{host}"\n', capsys)
    assert code == 2
    assert len(problems) == 1
    assert problems[0].startswith(f"server.host: plain_http_ingress: {host!r} is not a loopback address")


def test_a_plain_http_ingress_off_loopback_passes_with_the_opt_out_or_a_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: Pki
) -> None:
    opt_out = PASSTHROUGH + '[server]\nhost = "0.0.0.0"\nallow_plain_http = true\n'
    assert check(tmp_path, opt_out, capsys) == (0, [])
    tls = (
        PASSTHROUGH
        + f'[server]\nhost = "0.0.0.0"\n[server.tls]\ncert_file = "{pki.server_cert}"\nkey_file = "{pki.server_key}"\n'
    )
    assert check(tmp_path, tls, capsys) == (0, [])
    assert check(tmp_path, PASSTHROUGH + '[server]\nhost = "::1"\n', capsys) == (0, [])


# ------------------------------------------------------------------ [mqtt]: password without TLS


def _mqtt(tmp_path: Path, extra: str) -> str:
    (tmp_path / "mqtt.pw").write_text("s3cret\n", encoding="utf-8")
    return (
        PASSTHROUGH + '[[destinations]]\nname = "dno-a"\nurl = "http://127.0.0.1:1/"\n'
        '[mqtt]\nenabled = true\nusername = "gw"\n' + extra
    )


def test_an_mqtt_password_without_tls_to_a_broker_off_loopback_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, problems = check(
        tmp_path, _mqtt(tmp_path, 'host = "broker.example"\npassword_file = "mqtt.pw"\n'), capsys
    )
    assert code == 2
    assert problems == [
        "mqtt.password_file: plaintext_credentials: the password would be sent without TLS to 'broker.example', "
        "not a loopback address; set tls_enabled = true, or allow_plaintext_credentials = true"
    ]


@pytest.mark.parametrize(
    "extra",
    [
        'host = "broker.example"\npassword_file = "mqtt.pw"\ntls_enabled = true\n',
        'host = "broker.example"\npassword_file = "mqtt.pw"\nallow_plaintext_credentials = true\n',
        'host = "127.0.0.1"\npassword_file = "mqtt.pw"\n',
        'host = "broker.example"\n',  # a user name alone is no secret
    ],
    ids=["tls", "opt-out", "loopback", "no-password"],
)
def test_an_mqtt_password_passes_with_tls_the_opt_out_or_a_loopback_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str
) -> None:
    assert check(tmp_path, _mqtt(tmp_path, extra), capsys) == (0, [])


# ------------------------------------------------------------------ [[destinations]]: url credentials over http://


@pytest.mark.parametrize(
    "url",
    ["http://gw:s3cret@dno.example:8080/duis", "http://gw@10.0.0.5/duis", "http://:s3cret@[2001:db8::1]/x"],
)
def test_destination_credentials_over_plain_http_off_loopback_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    text = (
        PASSTHROUGH
        + f'[[destinations]]\nname = "dno-a"\nurl = "http://127.0.0.1:1/"\n[[destinations]]\nname = "dno-b"\nurl = "{url}"\n'
    )
    code, problems = check(tmp_path, text, capsys)
    assert code == 2
    assert len(problems) == 1
    assert problems[0].startswith(
        "destinations[1].url: plaintext_credentials: the url's user name and password"
    )
    assert "s3cret" not in problems[0]


@pytest.mark.parametrize(
    "dest",
    [
        'url = "https://gw:s3cret@dno.example/duis"\n',
        'url = "http://gw:s3cret@127.0.0.1:8080/duis"\n',
        'url = "http://gw:s3cret@localhost:8080/duis"\n',
        'url = "http://dno.example/duis"\n',
        'url = "http://gw:s3cret@dno.example/duis"\nallow_plaintext_credentials = true\n',
    ],
    ids=["https", "loopback", "localhost", "no-credentials", "opt-out"],
)
def test_destination_credentials_pass_over_https_to_loopback_or_with_the_opt_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dest: str
) -> None:
    assert check(tmp_path, PASSTHROUGH + '[[destinations]]\nname = "dno-a"\n' + dest, capsys) == (0, [])


# ------------------------------------------------------------------ [state]: a Redis password over redis://


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("redis://gw:s3cret@redis.example:6379/0", "redis.example"),
        ("redis://:s3cret@10.0.0.5/0", "10.0.0.5"),
        ("redis://redis.example/0?password=s3cret", "redis.example"),  # redis-py reads it from the query too
        ("redis://:s3cret@/0?host=10.0.0.6", "10.0.0.6"),
    ],
    ids=["userinfo", "password-only", "query", "query-host"],
)
def test_a_redis_password_over_plain_redis_to_a_host_off_loopback_is_refused_without_showing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, host: str
) -> None:
    code, problems = check(
        tmp_path, PASSTHROUGH + f'[state]\nbackend = "redis"\nredis_url = "{url}"\n', capsys
    )
    assert code == 2
    assert len(problems) == 1
    assert problems[0].startswith("state.redis_url: plaintext_credentials: the password of redis://")
    assert f"would be sent without TLS to {host!r}, not a loopback address" in problems[0]
    assert problems[0].endswith("use rediss://, or allow_plaintext_credentials = true")
    assert "s3cret" not in problems[0] and "***" in problems[0]


@pytest.mark.parametrize(
    "state",
    [
        'backend = "redis"\nredis_url = "rediss://gw:s3cret@redis.example:6380/0"\n',
        'backend = "redis"\nredis_url = "redis://gw:s3cret@127.0.0.1:6379/0"\n',
        'backend = "redis"\nredis_url = "redis://:s3cret@localhost/0"\n',
        'backend = "redis"\nredis_url = "redis://:s3cret@/0"\n',  # no host: redis-py connects to localhost
        'backend = "redis"\nredis_url = "unix://:s3cret@/run/redis/redis.sock?db=0"\n',
        'backend = "redis"\nredis_url = "redis://redis.example:6379/0"\n',
        'backend = "redis"\nredis_url = "redis://gw@redis.example:6379/0"\n',  # a user name alone is no secret
        'backend = "redis"\nredis_url = "redis://gw:s3cret@redis.example/0"\nallow_plaintext_credentials = true\n',
        'backend = "sqlite"\nredis_url = "redis://gw:s3cret@redis.example/0"\n',  # the url is not used
    ],
    ids=[
        "rediss",
        "loopback",
        "localhost",
        "no-host",
        "unix",
        "no-password",
        "user-only",
        "opt-out",
        "sqlite",
    ],
)
def test_a_redis_password_passes_over_tls_to_loopback_a_unix_socket_or_with_the_opt_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    assert check(tmp_path, PASSTHROUGH + "[state]\n" + state, capsys) == (0, [])


def test_the_redis_url_is_shown_with_its_passwords_masked() -> None:
    from gateway.store.redis_state import redacted_url

    assert redacted_url("redis://gw:s3cret@redis.example:6379/0") == "redis://gw:***@redis.example:6379/0"
    assert redacted_url("redis://h/0?db=1&password=s3cret&x=1") == "redis://h/0?db=1&password=***&x=1"
    assert redacted_url("redis://:a@h/0?password=b") == "redis://:***@h/0?password=***"
    assert redacted_url("rediss://redis.example/0") == "rediss://redis.example/0"


# ------------------------------------------------------------------ serve start


def test_serve_refuses_an_unauthenticated_admin_listener_off_loopback_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(
        PASSTHROUGH + f'[store]\npath = "{tmp_path / "gw.sqlite3"}"\n[admin]\nhost = "0.0.0.0"\nport = 0\n',
        encoding="utf-8",
    )
    assert main(["serve", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("duisgw serve: admin.host: unauthenticated_admin: ")
    assert not (tmp_path / "gw.sqlite3").exists()  # refused before anything was opened


async def test_the_service_refuses_to_start_on_what_config_check_refuses(tmp_path: Path) -> None:
    """An in-process caller that builds its config without the file's validation is refused too,
    before the store is opened or a port bound."""
    for cfg in (
        service_config(tmp_path, admin=AdminConfig(host="0.0.0.0", port=0)),
        service_config(tmp_path, server=ServerConfig(host="0.0.0.0", port=0)),
        service_config(
            tmp_path, admin=AdminConfig(host="127.0.0.1", port=0, token_file=str(tmp_path / "none"))
        ),
        service_config(tmp_path, state=StateConfig(backend="redis", redis_url="redis://:pw@redis.example/0")),
        service_config(
            tmp_path, admin=AdminConfig(host="0.0.0.0", port=0, token_file=str(token_file(tmp_path)))
        ),
    ):
        service = Service(cfg)
        with pytest.raises(ConfigError):
            await service.start()
        assert service.admin_port == 0 and service.port == 0
        assert not (tmp_path / "gw.sqlite3").exists()


def test_every_opt_out_in_force_is_a_start_warning() -> None:
    creds = DestinationConfig(
        name="dno-b", url="http://gw:s3cret@dno.example/duis", allow_plaintext_credentials=True
    )
    cfg = dataclasses.replace(
        service_config(Path("/nonexistent")),
        admin=AdminConfig(host="0.0.0.0", allow_unauthenticated=True),
        server=ServerConfig(host="0.0.0.0", allow_plain_http=True),
        mqtt=MqttConfig(
            enabled=True, host="broker.example", password_file="pw", allow_plaintext_credentials=True
        ),
        destinations=(creds,),
    )
    warnings = transport_security_warnings(cfg)
    assert [w.split(":", 1)[0] for w in warnings] == [
        "[admin] allow_unauthenticated",
        "[server] allow_plain_http",
        "[mqtt] allow_plaintext_credentials",
        "[[destinations]] dno-b",
    ]
    assert not any("s3cret" in w for w in warnings)
    token_in_clear = AdminConfig(host="0.0.0.0", token_file="t", allow_plaintext_credentials=True)
    warning = transport_security_warnings(dataclasses.replace(cfg, admin=token_in_clear))[0]
    assert warning.startswith("[admin] allow_plaintext_credentials: ")
    assert "its bearer token crosses the network in clear" in warning
    redis = dataclasses.replace(
        cfg,
        state=StateConfig(
            backend="redis", redis_url="redis://gw:s3cret@redis.example/0", allow_plaintext_credentials=True
        ),
    )
    assert transport_security_warnings(redis)[-1] == (
        "[state] allow_plaintext_credentials: the Redis password is sent without TLS to redis.example"
    )
    assert transport_security_warnings(service_config(Path("/nonexistent"))) == []


async def test_an_unauthenticated_admin_listener_off_loopback_starts_with_the_opt_out_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = service_config(tmp_path, admin=AdminConfig(host="0.0.0.0", port=0, allow_unauthenticated=True))
    with caplog.at_level(logging.WARNING, logger="duisgw.service"):
        async with (
            running(Service(cfg)) as service,
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{service.admin_port}/healthz") as resp,
        ):
            assert resp.status == 200
    assert any(
        "[admin] allow_unauthenticated" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
    )


# ------------------------------------------------------------------ the token on a real admin listener


def _failures(metrics_text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("duisgw_admin_auth_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return out


async def test_the_control_endpoints_need_the_bearer_token_and_metrics_and_probes_stay_open(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    lab = make_lab("admin-token", tmp_path / "reference", stream=0, first_meter=340, first_counter=3400)
    token_file(tmp_path)
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    cfg = dataclasses.replace(cfg, admin=AdminConfig(host="127.0.0.1", port=0, token_file="admin.token"))
    service = make_service(
        build_gateway(cfg), base_dir=tmp_path
    )  # the token file is relative to the config folder
    right = admin_auth_headers(cfg.admin, tmp_path)  # what `duisgw demo` sends
    with caplog.at_level(logging.WARNING, logger="duisgw.service"):
        async with running(service), aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.admin_port}"
            refused = [
                ("GET", "/admin/state", {}, "missing"),
                ("POST", "/admin/reload", {}, "missing"),
                ("POST", "/admin/tick", {"Authorization": "Basic Z3c6czNjcmV0"}, "missing"),
                ("GET", "/admin/state", {"Authorization": "Bearer " + TOKEN[:-1] + "0"}, "wrong"),
                ("GET", "/admin/state", {"Authorization": "Bearer " + TOKEN + "x"}, "wrong"),
                ("GET", "/%61dmin/state", {}, "missing"),  # another spelling of the same route
                ("GET", "/admin/nothing-here", {}, "missing"),  # an unknown path is no way around it
            ]
            for method, path, headers, reason in refused:
                async with http.request(method, base + path, headers=headers) as resp:
                    assert resp.status == 401, (method, path)
                    challenge = resp.headers["WWW-Authenticate"]
                    assert challenge.startswith("Bearer ")
                    assert ('error="invalid_token"' in challenge) is (reason == "wrong")
                    assert (await resp.text()) == f"unauthorized: {reason} bearer token\n"
            for path in ("/metrics", "/healthz", "/readyz"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
            async with http.get(base + "/admin/state", headers=right) as resp:
                assert resp.status == 200
                assert (await resp.json())["clock_mode"] == "message"
            async with http.post(
                base + "/admin/tick", json={"now": "2030-01-01T00:00:00Z"}, headers=right
            ) as resp:
                assert resp.status == 200
            async with http.get(base + "/admin/nothing-here", headers=right) as resp:
                assert resp.status == 404
            async with http.get(base + "/metrics") as resp:
                assert _failures(await resp.text()) == {"missing": 5.0, "wrong": 2.0}
    refusals = [r for r in caplog.records if "admin request refused" in r.getMessage()]
    assert len(refusals) == 1  # the other six within the minute: counted, not logged
    assert (
        refusals[0].getMessage()
        == "admin request refused (401): missing bearer token: GET /admin/state from 127.0.0.1"
    )
    for record in refusals:
        assert TOKEN[:12] not in record.getMessage() and TOKEN[:12] not in str(record.__dict__)


async def test_a_flood_of_refusals_is_counted_in_full_and_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scanner on the admin port: every 401 is counted in the metric, but at most one WARNING per
    interval (on the monotonic clock the service is given) reaches the log, and the next logged one
    says how many refusals were left out since the last."""
    token_file(tmp_path)
    now = [1000.0]
    cfg = service_config(tmp_path, admin=AdminConfig(host="127.0.0.1", port=0, token_file="admin.token"))
    service = Service(cfg, base_dir=tmp_path, monotonic=lambda: now[0])
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "0"}

    def logged() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if "admin request refused" in r.getMessage() and r.levelno == logging.WARNING
        ]

    with caplog.at_level(logging.DEBUG, logger="duisgw.service"):
        async with running(service), aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.admin_port}"

            async def scan(n: int, headers: dict[str, str]) -> None:
                for i in range(n):
                    async with http.get(f"{base}/admin/probe-{i}", headers=headers) as resp:
                        assert resp.status == 401

            await scan(30, {})
            now[0] += ADMIN_REFUSAL_LOG_INTERVAL - 0.001  # still within the interval
            await scan(20, wrong)
            async with http.get(base + "/metrics") as resp:
                assert _failures(await resp.text()) == {"missing": 30.0, "wrong": 20.0}
            assert [r.getMessage() for r in logged()] == [
                "admin request refused (401): missing bearer token: GET /admin/probe-0 from 127.0.0.1"
            ]
            assert logged()[0].__dict__["refusals_not_logged"] == 0

            now[0] += 0.001  # the interval has passed since the logged line
            await scan(5, wrong)
            async with http.get(base + "/metrics") as resp:
                assert _failures(await resp.text()) == {"missing": 30.0, "wrong": 25.0}
    records = logged()
    assert len(records) == 2
    assert records[1].getMessage() == (
        "admin request refused (401): wrong bearer token: GET /admin/probe-0 from 127.0.0.1"
        " (49 more refused since the last one logged, not logged)"
    )
    assert records[1].__dict__["refusals_not_logged"] == 49
    # the four after the second logged line (the interval never passed on the service's clock): at shutdown
    assert [(r.getMessage(), r.__dict__["when"]) for r in left_out_lines(caplog)] == [
        (
            "admin requests refused (401) and not logged since the last one logged: 4 (the gateway is stopping)",
            "shutdown",
        )
    ]


def left_out_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The lines counting refusals left out of the log (at the end of an interval, or at shutdown)."""
    return [
        r
        for r in caplog.records
        if r.getMessage().startswith("admin requests refused (401) and not logged")
        and r.levelno == logging.WARNING
    ]


async def test_refusals_left_out_are_logged_once_the_interval_passes_without_another_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals that stop within the interval: the ones left out are not left for a next refusal that may
    never come. One line counts them when the interval of the logged line has passed (a timer on the event
    loop, on the real monotonic clock here), and it comes once: no line repeats it, no other line is added
    while nothing is refused. Every refusal is in the log exactly once, one by one or in a count."""
    token_file(tmp_path)
    interval = 1.0
    cfg = service_config(tmp_path, admin=AdminConfig(host="127.0.0.1", port=0, token_file="admin.token"))
    service = Service(cfg, base_dir=tmp_path, admin_refusal_log_interval=interval)

    def refusal_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("admin request refused (401)")]

    with caplog.at_level(logging.INFO, logger="duisgw.service"):
        async with running(service), aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.admin_port}"
            for i in range(6):
                async with http.get(f"{base}/admin/probe-{i}") as resp:
                    assert resp.status == 401
            assert len(refusal_lines()) == 1
            assert left_out_lines(caplog) == []  # the interval has not passed yet (six requests on loopback)
            deadline = asyncio.get_running_loop().time() + 15
            while not left_out_lines(caplog):
                assert asyncio.get_running_loop().time() < deadline, "no line counted the refusals left out"
                await asyncio.sleep(0.05)
            await asyncio.sleep(interval * 2)  # nothing more is refused: nothing more is logged
            async with http.get(base + "/metrics") as resp:
                assert _failures(await resp.text()) == {"missing": 6.0}
        [first] = refusal_lines()
        [line] = left_out_lines(caplog)
    assert line.getMessage() == "admin requests refused (401) and not logged since the last one logged: 5"
    assert (line.__dict__["refusals_not_logged"], line.__dict__["when"]) == (5, "interval")
    assert line.created - first.created >= interval - 0.05  # not before the interval passed
    assert first.__dict__["refusals_not_logged"] == 0
    assert service.admin_refusal_log.left_out == 0  # nothing left for the shutdown


async def test_after_a_left_out_count_was_logged_the_next_refusal_is_logged_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line counting the refusals left out is not a refusal: the next refusal after the interval is
    logged with its method, path and peer (the scanner is seen again), counting nothing twice."""
    token_file(tmp_path)
    interval = 0.5
    cfg = service_config(tmp_path, admin=AdminConfig(host="127.0.0.1", port=0, token_file="admin.token"))
    service = Service(cfg, base_dir=tmp_path, admin_refusal_log_interval=interval)
    with caplog.at_level(logging.INFO, logger="duisgw.service"):
        async with running(service), aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.admin_port}"
            for path in ("/admin/a", "/admin/b", "/admin/c"):
                async with http.get(base + path) as resp:
                    assert resp.status == 401
            deadline = asyncio.get_running_loop().time() + 15
            while not left_out_lines(caplog):
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            async with http.get(base + "/admin/d") as resp:
                assert resp.status == 401
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(("admin request refused (401)", "admin requests refused (401)"))
    ]
    assert lines == [
        "admin request refused (401): missing bearer token: GET /admin/a from 127.0.0.1",
        "admin requests refused (401) and not logged since the last one logged: 2",
        "admin request refused (401): missing bearer token: GET /admin/d from 127.0.0.1",
    ]


# ------------------------------------------------------------------ docs/OPERATIONS.md


def test_the_operations_table_lists_every_transport_security_refusal() -> None:
    """docs/OPERATIONS.md's *Transport security refusals* table has one row per (option, code) that
    transport_security_problems can give, and no other."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
    section = (
        doc.read_text(encoding="utf-8").split("\n#### Transport security refusals\n", 1)[1].split("\n#", 1)[0]
    )
    documented = set(re.findall(r"^\| `([a-z_.\[\]N]+)` \| `([a-z_]+)` \|", section, re.MULTILINE))
    everything = dataclasses.replace(
        service_config(Path("/nonexistent")),
        admin=AdminConfig(host="0.0.0.0"),
        server=ServerConfig(host="0.0.0.0"),
        mqtt=MqttConfig(enabled=True, host="broker.example", password_file="pw"),
        destinations=(DestinationConfig(name="dno-b", url="http://gw:s3cret@dno.example/duis"),),
        state=StateConfig(backend="redis", redis_url="redis://:s3cret@redis.example/0"),
    )
    token_in_clear = dataclasses.replace(everything, admin=AdminConfig(host="0.0.0.0", token_file="t"))
    found = {
        (re.sub(r"\[\d+\]", "[N]", option), code.strip())
        for cfg in (everything, token_in_clear)
        for option, code, _detail in (p.split(":", 2) for p in transport_security_problems(cfg))
    }
    assert documented == found
