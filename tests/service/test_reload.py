"""Hot reload of the GUID list and the inventory snapshot (``POST /admin/reload``, SIGHUP): both files are
read before either is swapped in, so a reload that fails keeps all of the data in force."""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit import pipeline_config

from gateway.errors import DuisgwError
from gateway.service.serve import build_gateway
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui


async def test_a_reload_that_fails_on_the_inventory_keeps_the_guid_list_in_force_too(tmp_path: Path) -> None:
    world = World.generated("reload")
    reference = world.write_reference(tmp_path / "reference")
    gateway = build_gateway(pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", format_eui(DNO_EUI)))
    guids_before, generation = len(gateway.guids), gateway.guids.generation
    inventory_generation = gateway.inventory.generation
    good_inventory = reference["inventory"].read_bytes()

    with reference["guids"].open("a", encoding="utf-8") as f:  # two more GUIDs ...
        f.write("00-11-22-33-44-55-66-01\n00-11-22-33-44-55-66-02\n")
    reference["inventory"].write_text("esme,comms_hub\nnot an eui,also not\n", encoding="utf-8")  # ... a bad snapshot
    with pytest.raises(DuisgwError) as failed:
        await gateway.reload()
    assert "inventory" in str(failed.value).lower() or "eui" in str(failed.value).lower(), failed.value
    assert (len(gateway.guids), gateway.guids.generation) == (guids_before, generation)
    assert gateway.inventory.generation == inventory_generation

    reference["inventory"].write_bytes(good_inventory)  # the snapshot fixed: both go in
    report = await gateway.reload()
    assert report["guids"]["count"] == guids_before + 2 == len(gateway.guids)
    assert gateway.guids.generation == generation + 1
