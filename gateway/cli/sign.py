"""``duisgw sign FILE --key KEY --cert CERT [-o OUT]``: sign a DUIS document with the DCC profile (tools, fixtures).

KEY is a PKCS#8 private key (DER or PEM, unencrypted, as in the DCC Boxed test set), CERT its certificate
(PEM or DER). Exit 0 signed, 2 unusable input, key, certificate, ``--prefix`` or output (one line on
stderr). ``-o OUT`` is replaced whole (temporary file + rename; a device or pipe is written as it is):
a failed write leaves OUT as it was, even when OUT is FILE itself.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.cli.decode import read_input
from gateway.duis.errors import OversizeBody
from gateway.duis.xmldsig import sign
from gateway.errors import DuisgwError
from gateway.guids import atomic_write_bytes

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sign", help="sign a DUIS message (enveloped, DCC profile)")
    p.add_argument("file", type=Path, help="DUIS XML file ('-' for stdin)")
    p.add_argument("--key", required=True, type=Path, help="PKCS#8 private key, DER or PEM")
    p.add_argument("--cert", required=True, type=Path, help="the key's certificate, PEM or DER")
    p.add_argument(
        "--prefix", default="ds", help="namespace prefix of the Signature ('' for a default namespace)"
    )
    p.add_argument("-o", "--output", type=Path, help="output file (default stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        data = read_input(str(args.file))  # at most the DUIS size cap is ever read
        key_bytes = args.key.read_bytes()
        cert_bytes = args.cert.read_bytes()
    except OversizeBody as exc:
        print(f"duisgw sign: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"duisgw sign: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        if b"-----BEGIN" in key_bytes:
            key = serialization.load_pem_private_key(key_bytes, password=None)
        else:
            key = serialization.load_der_private_key(key_bytes, password=None)
        if b"-----BEGIN" in cert_bytes:
            cert = x509.load_pem_x509_certificate(cert_bytes)
        else:
            cert = x509.load_der_x509_certificate(cert_bytes)
    except (ValueError, TypeError) as exc:
        print(f"duisgw sign: unusable key or certificate: {str(exc)[:160]}", file=sys.stderr)
        return 2
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        print("duisgw sign: the key is not an EC private key", file=sys.stderr)
        return 2
    try:
        out = sign(data, key, cert, prefix=args.prefix or None)
    except DuisgwError as exc:
        print(f"duisgw sign: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # lxml: a --prefix that is not an XML name
        print(f"duisgw sign: --prefix {args.prefix!r}: {exc}", file=sys.stderr)
        return 2
    if args.output:
        try:
            _write(args.output, out)
        except OSError as exc:
            print(f"duisgw sign: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    else:
        sys.stdout.buffer.write(out)
    return 0


def _write(path: Path, data: bytes) -> None:
    """A regular file (or a new one) replaced whole, atomically, keeping its permissions (a new one gets
    the umask's); anything else (``/dev/stdout``, a pipe) written to as it is."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if path.exists() and not path.is_file():
        with open(path, "wb") as f:
            f.write(data)
        return
    target = path.resolve()  # a symbolic link's target is replaced, not the link
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        mode = 0o666 & ~umask
    atomic_write_bytes(target, data, mode)
