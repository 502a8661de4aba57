"""``duisgw verify FILE --certs DIR [--crl FILE ...] [--at TIME] [--tolerate-whitespace]``: verify a DUIS
XML signature.

The revocation lists in ``--certs`` (``*.crl``, ``*.arl`` ...) and those named by ``--crl`` are checked
against their issuers' certificates in the store; one that is refused is reported on stderr ("skipped")
and revokes nothing. A list past its nextUpdate at ``--now`` (default: the checking time) makes the
signature ``revocation_list_stale``.

Prints the :class:`~gateway.duis.xmldsig.VerifyResult` as JSON. Exit 0 valid, 1 invalid, unsigned, revoked
or unverifiable, 2 unusable input (not XML, DOCTYPE, not DUIS, unreadable certificate store ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.cli.decode import read_input
from gateway.duis.errors import OversizeBody
from gateway.duis.xmldsig import verify
from gateway.errors import DuisgwError
from gateway.smki import CertificateStore, SigningPolicy, parse_trust_expired

__all__ = ["register"]


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("verify", help="verify the XML signature of a DUIS message (JSON result)")
    p.add_argument("file", type=Path, help="DUIS XML file ('-' for stdin)")
    p.add_argument(
        "--certs", required=True, type=Path, help="SMKI certificates: a PEM/DER directory or keystore.json"
    )
    p.add_argument(
        "--crl", action="append", default=[], type=Path, metavar="FILE",
        help="SMKI revocation list (CRL/ARL, PEM or DER; or a folder of them) besides those in --certs; "
             "repeatable",
    )  # fmt: skip
    p.add_argument(
        "--at", type=_time, help="check certificate validity at this time (default: ResponseDateTime)"
    )
    p.add_argument(
        "--now", type=_time,
        help="time for messages without ResponseDateTime (requests), and for judging whether a revocation "
             "list is past its nextUpdate (default: the checking time)",
    )  # fmt: skip
    p.add_argument(
        "--tolerate-whitespace", action="store_true", help="second pass ignoring element-content white space"
    )
    p.add_argument("--trust-expired", action="append", default=[], metavar="ISSUER#SERIAL",
                   help="accept this certificate after it expired (test certificates): issuer DN '#' decimal "
                        "serial, e.g. 'CN=Z1,OU=07#1234'; a bare serial matches any issuer")  # fmt: skip
    p.add_argument("--dsp-eui", help="EUI-64 of the DSP signer (default 90-B3-D5-1F-30-00-00-02)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gbcs.eui import EUIError, parse_eui

    try:
        data = read_input(str(args.file))  # at most the DUIS size cap is ever read
    except OversizeBody as exc:
        print(f"duisgw verify: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"duisgw verify: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        store = CertificateStore.from_path(args.certs, crls=args.crl)
        for label, err in store.rejected:
            print(f"duisgw verify: skipped {label}: {err}", file=sys.stderr)
        kw: dict[str, Any] = {"trust_expired": parse_trust_expired(args.trust_expired)}
        if args.dsp_eui:
            kw["dsp_eui"] = parse_eui(args.dsp_eui)
        result = verify(data, store, SigningPolicy(**kw), at=args.at, now=args.now,
                        tolerate_whitespace=args.tolerate_whitespace)  # fmt: skip
    except DuisgwError as exc:
        print(f"duisgw verify: {exc}", file=sys.stderr)
        return 2
    except (EUIError, ValueError) as exc:
        print(f"duisgw verify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.valid else 1
