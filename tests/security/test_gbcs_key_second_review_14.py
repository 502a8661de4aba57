"""Second review of the GBCS key store that keeps every certificate of a device (old and new after a
certificate replacement, GBCS CS02).

A device's own ``<eui>-ds.pem`` may hold several PEM certificates. When a later block of such a file does not
parse (a copy cut short while the operator appended the device's new certificate), the file gave its first
certificate and nothing else, and nothing said a certificate could not be read: a reload then dropped the new
certificate in force without being refused, although a reload must never take a device's certificate away on
a read failure (docs/OPERATIONS.md: "A device with two certificates"). The genuine signatures the meter makes
with its new key became unverifiable, so its activations stopped being evidence and its false AD1s reached
the DNO.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from gateway.gbcs_keys import load_keystore, reload_keystore
from gateway.testkit.pki import derive_key
from tests.security.lab import DAY, NO_CERT
from tests.security.test_gbcs_key_multi_cert import device_cert
from tests.security.test_signature_review_13 import pem


def _cut_short(block: bytes) -> bytes:
    """A PEM certificate whose base64 stops halfway (what a copy interrupted mid-file leaves)."""
    lines = block.splitlines(keepends=True)
    return b"".join(lines[: len(lines) // 2]) + lines[-1]


def test_a_reload_that_cannot_read_a_devices_second_certificate_in_its_own_file_is_refused(
    tmp_path: Path,
) -> None:
    esme = 0x00DB_0000_0000_0000 | (NO_CERT + 41)
    old = device_cert(derive_key("r14:own-file:old"), esme, 0x4101)
    new = device_cert(derive_key("r14:own-file:new"), esme, 0x4102, not_before=DAY - dt.timedelta(days=30))
    d, index = tmp_path / "keys", tmp_path / "state" / "gbcs-keys.idx"
    d.mkdir()
    own = d / f"{esme:016x}-ds.pem"
    own.write_bytes(pem(old) + pem(new))
    both = load_keystore(d, index=index)
    assert both.ds_certificates(esme) == (new, old)  # type: ignore[attr-defined]

    own.write_bytes(pem(old) + _cut_short(pem(new)))
    found = reload_keystore(d, index=index, current=both)
    assert found.store is None and found.refused is not None and "drop 1 certificate" in found.refused


def test_a_devices_file_with_an_unreadable_second_certificate_says_so_when_loaded(tmp_path: Path) -> None:
    esme = 0x00DB_0000_0000_0000 | (NO_CERT + 42)
    old = device_cert(derive_key("r14:own-file2:old"), esme, 0x4201)
    new = device_cert(derive_key("r14:own-file2:new"), esme, 0x4202, not_before=DAY - dt.timedelta(days=30))
    d = tmp_path / "keys"
    d.mkdir()
    name = f"{esme:016x}-ds.pem"
    (d / name).write_bytes(pem(old) + _cut_short(pem(new)))
    store = load_keystore(d)
    assert store.ds_certificates(esme) == (old,)  # type: ignore[attr-defined]
    why = next(why for n, why in store.skipped if n.startswith(name))  # type: ignore[attr-defined]
    assert why.startswith("unreadable certificate")
