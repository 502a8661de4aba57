"""``duisgw sign -o OUT``: an output that cannot be written, or a ``--prefix`` that is not an XML name,
is one line on stderr and exit 2 (they were tracebacks); OUT is replaced whole or left as it was."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.cli import main


def _sign(shared: Path, src: Path, *extra: str) -> list[str]:
    smki = shared / "smki" / "dccboxed"
    return [
        "sign", str(src),
        "--key", str(smki / "Z1-accessControlBroker-dSPXmlSign.key"),
        "--cert", str(smki / "Z1-accessControlBroker-dSPXmlSign.pem"),
        *extra,
    ]  # fmt: skip


def _source(shared: Path) -> Path:
    return shared / "duis" / "samples" / "ECS50_9.1_SUCCESS_REQUEST_DUIS.XML"


@pytest.mark.parametrize("where", ["a-directory", "missing-parent"])
def test_sign_to_an_unwritable_output_exits_2_with_one_line(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    out = tmp_path if where == "a-directory" else tmp_path / "no" / "signed.xml"
    assert main(_sign(shared, _source(shared), "-o", str(out))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"duisgw sign: cannot write {out}: ") and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_sign_with_a_prefix_that_is_not_an_xml_name_exits_2_with_one_line(
    shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_sign(shared, _source(shared), "--prefix", "a b")) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("duisgw sign: --prefix 'a b': ") and err.count("\n") == 1


def test_sign_in_place_replaces_the_file_whole_keeping_its_permissions(shared: Path, tmp_path: Path) -> None:
    doc = tmp_path / "request.xml"
    doc.write_bytes(_source(shared).read_bytes())
    os.chmod(doc, 0o640)
    link = tmp_path / "link.xml"
    link.symlink_to(doc.name)
    assert main(_sign(shared, link, "-o", str(link))) == 0
    assert link.is_symlink()  # the link's target was replaced, not the link
    assert b"SignatureValue" in doc.read_bytes()
    assert stat.S_IMODE(doc.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.xml", "request.xml"]
