"""The ``duisgw`` command line.

Each sub-command lives in its own module in this package and exposes
``register(subparsers) -> None``; the module adds its parser and sets ``func`` (a callable taking
the parsed namespace and returning the exit code). Modules are discovered, so adding a command
touches no shared file. Exit codes across commands: 0 ok, 1 a negative result (invalid, failed
verification), 2 unusable input or arguments (one-line reason on stderr), 130 interrupted (SIGINT).

Standard output is flushed before :func:`main` returns, so a failed write is never mistaken for
success: a reader that went away (``duisgw decode F | head -1``) ends the command quietly with 141
(128 + SIGPIPE, what a shell reports for a command ended by a closed pipe; never 0 or 1, which are
answers the output carried), any other write failure (a full disk, standard output closed) with
one line on stderr and 2. No traceback in either case.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

import gateway

__all__ = ["EXIT_BROKEN_PIPE", "build_parser", "main"]

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duisgw", description="DUIS/GBCS inline gateway for GB smart metering (SEC MP102B)."
    )
    parser.add_argument("--version", action="version", version=f"duisgw {gateway.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    real = sys.stdout is None or sys.stdout is sys.__stdout__
    saved = sys.stdout
    if real:  # the process's own standard output (not a caller's capture): its write failures are ours
        sys.stdout = _output_stream(saved)
    try:
        try:
            code = _dispatch(argv)
        except SystemExit:  # argparse: --help, --version and usage errors print, then exit
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (``| head -1``): quietly, and not a success
        return EXIT_BROKEN_PIPE
    except _OutputFailed as exc:
        print(f"duisgw: cannot write the output: {exc.reason}", file=sys.stderr)
        return 2
    finally:
        if real:
            sys.stdout = saved


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("duisgw: interrupted", file=sys.stderr)
        return 130


class _OutputFailed(Exception):
    """Writing standard output failed for a reason other than a broken pipe (not an OSError, so that
    no command's handling of its own files takes it for one of theirs)."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc)
        self.reason = exc.strerror or str(exc)


class _Output(io.RawIOBase):
    """File descriptor 1 under the text layer of ``sys.stdout``. The first failed write raises
    (:class:`BrokenPipeError` as it is, any other as :class:`_OutputFailed`); later writes, such as
    the interpreter's flush at exit of what is still buffered, are dropped: the failure is reported
    once, with no "Exception ignored" after it. ``fd`` None: the process started with standard output
    closed (``>&-``)."""

    def __init__(self, fd: int | None) -> None:
        super().__init__()
        self._fd = fd
        self.failed = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any, /) -> int:
        if self.failed:
            return memoryview(b).nbytes
        try:
            if self._fd is None:
                raise OSError(errno.EBADF, "standard output is closed")
            return os.write(self._fd, b)
        except BrokenPipeError:
            self.failed = True
            raise
        except OSError as exc:
            self.failed = True
            raise _OutputFailed(exc) from None


def _output_stream(current: Any) -> io.TextIOWrapper:
    fd: int | None
    try:
        fd = None if current is None else int(current.fileno())
    except (OSError, ValueError):
        fd = None
    return io.TextIOWrapper(
        io.BufferedWriter(_Output(fd)),
        encoding=getattr(current, "encoding", None) or "utf-8",
        errors=getattr(current, "errors", None) or "strict",
        line_buffering=bool(getattr(current, "line_buffering", False)),
        write_through=bool(getattr(current, "write_through", False)),
    )
