"""The bundled demonstration scenario: one morning of a firmware campaign seen by a DNO.

Self-contained: keys and certificates come from the deterministic test PKI, so it runs on a fresh
machine with nothing else present. Eight premises:

1. immediate activation, the meter's reboot raises an AD1 inside the window → suppressed; the
   restoration alert that follows pairs with it → suppressed;
2. future-dated activation; the AD1 arrives before the 8F66 → held, then suppressed;
3. future-dated activation that fails (8F67) → forwarded (default policy);
4. future-dated activation cancelled → forwarded;
5. a genuine power cut on a meter in the campaign, hours after its activation → forwarded;
6. a meter not in the MP102B GUID list → forwarded;
7. a forged "activation" (XML-signed by an unknown key) → never evidence → forwarded;
8. a Comms Hub the inventory learns from an 8.2 response, then activation + AD1 → suppressed;
plus the same AD1 delivered twice (one decision).
"""

from __future__ import annotations

from gateway.testkit.messages import DCC_EUI, Signer
from gateway.testkit.pki import ROLE_DSP_XML_SIGN, TestPKI
from gateway.testkit.scenario import Scenario, World

__all__ = ["demo_scenario"]


def demo_scenario(world: World | None = None) -> Scenario:
    w = world or World.generated()
    f = w.factory
    s = Scenario("demo", w)
    s.description = "A firmware-activation campaign morning as a DNO sees it (MP102B)"
    t = s.t

    e1, c1, m1 = w.meter(1)
    s.observe("08:00:00", f.activate_request(e1, 5001), "11.3 request, meter 1 (immediate)")
    s.observe("08:00:35", f.activate_response(e1, 5001, t("08:00:35")), "11.3 response: success")
    ad1 = f.ad1(c1, m1, t("08:03:40"), t("08:06:10"), 101)
    s.inline("08:06:10", ad1, "suppress", "activation-window", label="AD1 meter 1 (reboot)")
    s.inline("08:06:12", ad1, "suppress", "activation-window", label="AD1 meter 1 delivered twice")
    s.inline("08:09:00", f.restoration(e1, t("08:03:40"), t("08:05:20"), t("08:09:00")), "suppress",
             "restoration-paired", label="8F36 restoration meter 1")  # fmt: skip

    e2, c2, m2 = w.meter(2)
    s.observe("07:30:00", f.activate_request(e2, 5002, execution=t("09:00")), "11.3 future-dated 09:00, meter 2")
    s.observe("07:30:40", f.activate_response(e2, 5002, t("07:30:40"), result=None), "accepted for later")
    s.inline("09:04:05", f.ad1(c2, m2, t("09:00:55"), t("09:04:05"), 102), "suppress", "fd-confirmed",
             held=True, label="AD1 meter 2 before its 8F66")  # fmt: skip
    s.observe("09:05:30", f.future_dated_outcome(e2, 5002, t("09:00"), t("09:05:30")), "8F66 meter 2")

    e3, c3, m3 = w.meter(3)
    s.observe("07:31:00", f.activate_request(e3, 5003, execution=t("09:10")), "11.3 future-dated 09:10, meter 3")
    s.observe("09:11:00", f.future_dated_outcome(e3, 5003, t("09:10"), t("09:11"), success=False, result=3),
              "8F67 meter 3 (activation failure)")  # fmt: skip
    s.inline("09:14:00", f.ad1(c3, m3, t("09:10:50"), t("09:14"), 103), "forward", "fd-failed",
             label="AD1 meter 3 after a failed activation")  # fmt: skip

    e4, c4, m4 = w.meter(4)
    s.observe("07:32:00", f.activate_request(e4, 5004, execution=t("09:20")), "11.3 future-dated 09:20, meter 4")
    s.observe("08:15:00", f.activate_request(e4, 5005, cancellation=True), "11.3 cancellation, meter 4")
    s.inline("09:24:00", f.ad1(c4, m4, t("09:20:40"), t("09:24"), 104), "forward", "cancelled",
             label="AD1 meter 4 (activation was cancelled)")  # fmt: skip

    e5, c5, m5 = w.meter(5)
    s.observe("08:01:00", f.activate_response(e5, 5006, t("08:01:00")), "11.3 response: success, meter 5")
    s.inline("11:40:00", f.ad1(c5, m5, t("11:36:00"), t("11:40"), 105), "forward", "outside-window",
             label="AD1 meter 5: a real power cut hours later")  # fmt: skip

    e6, c6, m6 = w.meter(6, in_scope=False, manufacturer="Other Meters Ltd")
    s.observe("08:02:00", f.activate_response(e6, 5007, t("08:02:00")), "11.3 response, meter 6 (not in list)")
    s.inline("08:07:00", f.ad1(c6, m6, t("08:05:00"), t("08:07"), 106), "forward", "out-of-scope",
             label="AD1 meter 6 (not in the GUID list)")  # fmt: skip

    e7, c7, m7 = w.meter(7)
    forger = TestPKI(seed="someone-else").organisation("fake-dsp", DCC_EUI, ROLE_DSP_XML_SIGN)
    s.observe("08:03:00", f.activate_response(e7, 5008, t("08:03"), signer=Signer(forger.private_key,
                                                                                   forger.certificate)),
              "forged 11.3 response, meter 7")  # fmt: skip
    s.inline("08:08:00", f.ad1(c7, m7, t("08:05:30"), t("08:08"), 107), "forward", "evidence-unverified",
             label="AD1 meter 7 (only forged evidence)")  # fmt: skip

    e8, c8, m8 = w.meter(8, known=False)
    s.observe("08:20:00", f.inventory_response(t("08:20"), 9001, [(e8, "ESME", m8, "Landis+Gyr", "E470"),
                                                                  (c8, "CHF", None, "Toshiba", "CHF")]),
              "8.2 inventory response, premises 8")  # fmt: skip
    s.observe("08:30:30", f.activate_response(e8, 5009, t("08:30:30")), "11.3 response: success, meter 8")
    s.inline("08:36:00", f.ad1(c8, m8, t("08:33:10"), t("08:36"), 108), "suppress", "activation-window",
             label="AD1 meter 8 (CH learned from 8.2)")  # fmt: skip
    s.steps.sort(key=lambda st: st.at)
    return s
