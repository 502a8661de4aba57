"""The ``duisgw`` process when its standard output cannot take the output: a reader that went away
(``| head -1``), a full disk, standard output closed. Run as the real entry point (``python -m
gateway``) in a child process: exit codes, stderr and the interpreter's own flush at exit are about
the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_BROKEN_PIPE

PROJECT = Path(__file__).resolve().parents[2]
CAPTURES = PROJECT / "captures"


def _env(unbuffered: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(PROJECT)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _into_closed_pipe(*argv: str, unbuffered: bool = False) -> tuple[int, str]:
    """Run ``duisgw ARGV`` with standard output a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=_env(unbuffered),
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _run(*argv: str, stdout: int | None = None, close_stdout: bool = False) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", *argv],
        stdout=stdout if stdout is not None else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
        timeout=120,
        check=False,
        preexec_fn=(lambda: os.close(1)) if close_stdout else None,
    )
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def test_validate_of_an_invalid_document_into_a_closed_pipe_exits_141_quietly_not_0_or_1(
    shared: Path, unbuffered: bool
) -> None:
    invalid = shared / "duis" / "samples" / "readfw-response-invalid.xml"
    rc, err = _into_closed_pipe("validate", str(invalid), unbuffered=unbuffered)
    # 0 would read as "valid", 1 as an answer the reader never got; 120 came with "Exception ignored"
    assert rc == EXIT_BROKEN_PIPE == 141
    assert err == ""


@pytest.mark.parametrize(
    "argv",
    [["config", "default"], ["--help"], ["--version"]],
    ids=["config-default-large", "help", "version"],
)
def test_output_into_a_closed_pipe_exits_141_without_a_traceback_or_exception_ignored(
    argv: list[str],
) -> None:
    rc, err = _into_closed_pipe(*argv)
    assert rc == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "Exception ignored" not in err and err == ""


def test_replay_into_a_closed_pipe_exits_141_without_a_traceback(shared: Path) -> None:
    rc, err = _into_closed_pipe(
        "replay", str(CAPTURES / "immediate-activation.pcap"),
        "--guids", str(CAPTURES / "guids.csv"), "--inventory", str(CAPTURES / "inventory.csv"),
        "--certs", str(shared / "smki" / "dccboxed"), "--gbcs-keys", str(CAPTURES / "gbcs-keys"),
        "--workers", "1", "--quiet",
    )  # fmt: skip
    assert rc == EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "Exception ignored" not in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize(
    "argv",
    [["config", "default"], ["--help"], ["validate", "SHARED/duis/samples/readfw-response-invalid.xml"]],
    ids=["config-default-large", "help", "validate-invalid"],
)
def test_output_to_a_full_disk_is_one_line_on_stderr_and_exit_2(shared: Path, argv: list[str]) -> None:
    argv = [a.replace("SHARED", str(shared)) for a in argv]
    with open("/dev/full", "wb") as full:
        rc, err = _run(*argv, stdout=full.fileno())
    assert rc == 2
    assert err == "duisgw: cannot write the output: No space left on device\n"


@pytest.mark.parametrize("command", ["decode", "sign"])
def test_closed_standard_output_is_one_line_on_stderr_and_exit_2_not_success_or_a_traceback(
    shared: Path, command: str
) -> None:
    sample = shared / "duis" / "samples" / "ECS50_9.1_SUCCESS_REQUEST_DUIS.XML"
    smki = shared / "smki" / "dccboxed"
    extra = []
    if command == "sign":
        extra = ["--key", str(smki / "Z1-accessControlBroker-dSPXmlSign.key"),
                 "--cert", str(smki / "Z1-accessControlBroker-dSPXmlSign.pem")]  # fmt: skip
    rc, err = _run(command, str(sample), *extra, close_stdout=True)
    # decode exited 0 with its output gone nowhere; sign raised AttributeError on sys.stdout None
    assert rc == 2
    assert err == "duisgw: cannot write the output: standard output is closed\n"


def test_output_that_is_read_is_unchanged_and_keeps_the_command_exit_code(shared: Path) -> None:
    invalid = shared / "duis" / "samples" / "readfw-response-invalid.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "validate", str(invalid)],
        capture_output=True, env=_env(), timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout.decode().startswith("invalid (compact):\n  line ")
    assert proc.stderr == b""
