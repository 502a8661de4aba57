"""``duisgw replay`` with files it cannot use or write: one line on stderr and exit 2, before the run
reads its first message (never a traceback, never a finished run whose report then fails)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

PROJECT = Path(__file__).resolve().parents[2]
CAPTURES = PROJECT / "captures"


def _replay(shared: Path, *extra: str) -> list[str]:
    return [
        "replay", str(CAPTURES / "immediate-activation.pcap"),
        "--guids", str(CAPTURES / "guids.csv"), "--inventory", str(CAPTURES / "inventory.csv"),
        "--certs", str(shared / "smki" / "dccboxed"), "--gbcs-keys", str(CAPTURES / "gbcs-keys"),
        "--workers", "1", "--quiet", *extra,
    ]  # fmt: skip


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("where", ["a-directory", "missing-parent"])
def test_replay_with_an_unwritable_jsonl_exits_2_with_one_line_and_decides_nothing(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    target = tmp_path if where == "a-directory" else tmp_path / "no" / "such" / "out.jsonl"
    assert main(_replay(shared, "--jsonl", str(target))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err).startswith(f"duisgw replay: --jsonl {target}: cannot write: ")


def test_replay_with_an_unwritable_html_report_exits_2_before_the_run_not_with_a_traceback_after_it(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_replay(shared, "--html", str(tmp_path))) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no decision line: the run did not start (it used to run whole, then fail)
    assert _one_line(err) == f"duisgw replay: --html {tmp_path}: cannot write: Is a directory\n"


def test_replay_keeps_an_existing_html_report_until_the_new_one_replaces_it_whole(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.html"
    report.write_text("an older and much longer report " * 1000, encoding="utf-8")
    assert main(_replay(shared, "--html", str(report))) == 0
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "older" not in html


@pytest.mark.parametrize("state", ["a-directory", "not-a-database", "missing-parent"])
def test_replay_with_an_unusable_state_file_exits_2_with_one_line(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    path = {
        "a-directory": tmp_path,
        "not-a-database": CAPTURES / "guids.csv",
        "missing-parent": tmp_path / "no" / "state.db",
    }[state]
    before = (CAPTURES / "guids.csv").read_bytes()
    assert main(_replay(shared, "--state", str(path))) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err).startswith(f"duisgw replay: --state {path}: ")
    assert (CAPTURES / "guids.csv").read_bytes() == before


def test_replay_with_a_config_that_is_not_utf8_exits_2_with_one_line(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"[engine]\n# \xb2\xff\n")
    assert main(_replay(shared, "--config", str(config))) == 2
    assert _one_line(capsys.readouterr().err).endswith(f"config {config}: not UTF-8\n")


def test_replay_with_gbcs_keys_that_are_not_a_directory_says_so_not_none_none(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _replay(shared)
    argv[argv.index("--gbcs-keys") + 1] = str(CAPTURES / "guids.csv")
    assert main(argv) == 2
    err = _one_line(capsys.readouterr().err)
    assert "None" not in err and f"key store directory not found: {CAPTURES / 'guids.csv'}" in err


@pytest.mark.parametrize(
    "option", [["--batch", "0"], ["--batch", "-1"], ["--workers", "0"], ["--workers", "-3"]]
)
def test_replay_refuses_a_batch_or_worker_count_below_one(
    shared: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    assert main([*_replay(shared)[:-3], *option]) == 2  # without the --workers 1 --quiet of _replay
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err).startswith(f"duisgw replay: {option[0]} must be ")
