"""The named scenario library behind ``captures/`` (written by ``tools/make_captures.py``).

Each function builds one :class:`~gateway.testkit.scenario.Scenario` on a shared :class:`World`, with
the decision every DNO-bound message must get. Premises numbers are disjoint between scenarios so
the whole library shares one GUID list and one inventory.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from gateway.testkit.messages import DCC_EUI, Signer
from gateway.testkit.pki import ROLE_DSP_XML_SIGN, TestPKI
from gateway.testkit.scenario import Scenario, World

__all__ = ["SCENARIOS", "build_library"]


def immediate_activation(w: World) -> Scenario:
    s = Scenario("immediate-activation", w)
    s.description = "11.3 request and success response, the meter reboots, AD1 inside the window"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(101)
    s.observe("09:00:00", f.activate_request(esme, 7001), "11.3 request (CV4)")
    s.observe("09:00:35", f.activate_response(esme, 7001, t("09:00:35"), gbcs_time=t("09:00:31")), "11.3 success")
    s.inline("09:06:20", f.ad1(ch, mpan, t("09:03:45"), t("09:06:20"), 1101), "suppress", "activation-window",
             held=False, label="AD1 after reboot")  # fmt: skip
    s.inline("09:08:00", f.restoration(esme, t("09:03:45"), t("09:05:10"), t("09:08:00")), "suppress",
             "restoration-paired", label="8F36 restoration")  # fmt: skip
    return s


def future_dated_8f66_before_ad1(w: World) -> Scenario:
    s = Scenario("future-dated-8f66-before-ad1", w)
    s.description = "future-dated activation, 8F66 arrives before the AD1: suppressed on arrival"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(102)
    s.observe("06:00:00", f.activate_request(esme, 7002, execution=t("10:00"), signed_pre_command=True),
              "11.3 CV5 future-dated 10:00")  # fmt: skip
    s.observe("06:00:30", f.activate_response(esme, 7002, t("06:00:30"), result=None), "accepted for later")
    s.observe("10:00:40", f.future_dated_outcome(esme, 7002, t("10:00"), t("10:00:40")), "8F66")
    s.inline("10:04:10", f.ad1(ch, mpan, t("10:00:58"), t("10:04:10"), 1102), "suppress", "fd-confirmed",
             held=False, label="AD1 after 8F66")  # fmt: skip
    return s


def future_dated_8f66_after_ad1(w: World) -> Scenario:
    s = Scenario("future-dated-8f66-after-ad1", w)
    s.description = "future-dated activation, the AD1 arrives before the 8F66: held, then suppressed"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(103)
    s.observe("06:05:00", f.activate_request(esme, 7003, execution=t("10:30")), "11.3 future-dated 10:30")
    s.observe("06:05:30", f.activate_response(esme, 7003, t("06:05:30"), result=None), "accepted for later")
    s.inline("10:34:05", f.ad1(ch, mpan, t("10:30:50"), t("10:34:05"), 1103), "suppress", "fd-confirmed",
             held=True, label="AD1 before 8F66")  # fmt: skip
    s.observe("10:36:00", f.future_dated_outcome(esme, 7003, t("10:30"), t("10:36")), "8F66 (late)")
    return s


def failed_activation(w: World) -> Scenario:
    s = Scenario("failed-activation", w)
    s.description = "immediate activation fails (result 3) and a future-dated one fails (8F67): AD1s forwarded"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(104)
    s.observe("09:10:00", f.activate_request(esme, 7004), "11.3 request")
    s.observe("09:10:30", f.activate_response(esme, 7004, t("09:10:30"), result=3), "11.3 activation failure")
    s.inline("09:15:00", f.ad1(ch, mpan, t("09:12:00"), t("09:15"), 1104), "forward", "activation-failed",
             label="AD1 after failed immediate activation")  # fmt: skip
    esme2, ch2, mpan2 = w.meter(105)
    s.observe("06:10:00", f.activate_request(esme2, 7005, execution=t("11:00")), "11.3 future-dated 11:00")
    s.observe("11:00:30", f.future_dated_outcome(esme2, 7005, t("11:00"), t("11:00:30"), success=False, result=2),
              "8F67 hash mismatch")  # fmt: skip
    s.inline("11:04:00", f.ad1(ch2, mpan2, t("11:00:45"), t("11:04"), 1105), "forward", "fd-failed",
             label="AD1 after 8F67")  # fmt: skip
    return s


def cancellation(w: World) -> Scenario:
    s = Scenario("cancellation", w)
    s.description = "future-dated activation cancelled (ExecutionDateTime 3000-12-31): AD1 forwarded"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(106)
    s.observe("06:15:00", f.activate_request(esme, 7006, execution=t("11:30")), "11.3 future-dated 11:30")
    s.observe("06:15:30", f.activate_response(esme, 7006, t("06:15:30"), result=None), "accepted")
    s.observe("08:00:00", f.activate_request(esme, 7007, cancellation=True), "11.3 cancellation")
    s.observe("08:00:30", f.activate_response(esme, 7007, t("08:00:30"), result=None), "cancellation accepted")
    s.inline("11:34:00", f.ad1(ch, mpan, t("11:30:40"), t("11:34"), 1106), "forward", "cancelled",
             held=False, label="AD1 at the cancelled time")  # fmt: skip
    return s


def genuine_outage_during_campaign(w: World) -> Scenario:
    s = Scenario("genuine-outage-during-campaign", w)
    s.description = "activations on some meters; a real outage on other in-scope meters and on one activated hours later"
    f, t = w.factory, s.t
    for i, n in enumerate(range(107, 112)):
        esme, ch, mpan = w.meter(n)
        at = t(f"08:{10 + i:02d}:00")
        s.observe(at, f.activate_request(esme, 7100 + n), f"11.3 request meter {n}")
        rt = t(f"08:{10 + i:02d}:40")
        s.observe(rt, f.activate_response(esme, 7100 + n, rt), f"11.3 success meter {n}")
        if i < 2:
            a = t(f"08:{16 + i:02d}:00")
            s.inline(a, f.ad1(ch, mpan, t(f"08:{13 + i:02d}:30"), a, 1200 + n), "suppress", "activation-window",
                     label=f"AD1 reboot meter {n}")  # fmt: skip
        else:
            a = t(f"13:{i:02d}:30")
            s.inline(a, f.ad1(ch, mpan, t("13:00:05"), a, 1200 + n), "forward", "outside-window",
                     label=f"AD1 storm-hour outage meter {n}")  # fmt: skip
    for n in range(112, 116):
        esme, ch, mpan = w.meter(n)
        a = t(f"13:{n - 100:02d}:00")
        s.inline(a, f.ad1(ch, mpan, t("13:00:05"), a, 1200 + n), "forward", "no-activation",
                 label=f"AD1 outage meter {n}")  # fmt: skip
    s.steps.sort(key=lambda st: st.at)
    return s


def late_delivery(w: World) -> Scenario:
    s = Scenario("late-delivery", w)
    s.description = "an AD1 re-delivered two days late is decided by its own StartDateTime"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(116)
    s.observe("09:20:00", f.activate_request(esme, 7008), "11.3 request")
    s.observe("09:20:30", f.activate_response(esme, 7008, t("09:20:30")), "11.3 success")
    late = t("08:00", days=2)
    s.inline(late, f.ad1(ch, mpan, t("09:23:00"), late, 1116), "suppress", "activation-window",
             label="AD1 two days late")  # fmt: skip
    late2 = t("08:05", days=2)
    s.inline(late2, f.ad1(ch, mpan, t("07:58", days=2), late2, 1117), "forward", "outside-window",
             label="a fresh AD1 on the same meter")  # fmt: skip
    return s


def duplicates(w: World) -> Scenario:
    s = Scenario("duplicates", w)
    s.description = "the DCC delivers the same AD1, 11.3 response and 8F66 twice: one decision each"
    f, t = w.factory, s.t
    esme, ch, mpan = w.meter(117)
    s.observe("09:30:00", f.activate_request(esme, 7009), "11.3 request")
    resp = f.activate_response(esme, 7009, t("09:30:30"))
    s.observe("09:30:30", resp, "11.3 success")
    s.observe("09:30:31", resp, "11.3 success (again)")
    ad1 = f.ad1(ch, mpan, t("09:33:00"), t("09:36"), 1117)
    s.inline("09:36:00", ad1, "suppress", "activation-window", label="AD1")
    s.inline("09:36:02", ad1, "suppress", "activation-window", label="AD1 (again)")
    _esme2, ch2, mpan2 = w.meter(118)
    ad1b = f.ad1(ch2, mpan2, t("09:40:00"), t("09:43"), 1118)
    s.inline("09:43:00", ad1b, "forward", "no-activation", label="AD1 no activation")
    s.inline("09:43:05", ad1b, "forward", "no-activation", label="AD1 no activation (again)")
    return s


def forged_evidence(w: World) -> Scenario:
    s = Scenario("forged-evidence", w)
    s.description = "activation evidence signed by an unknown key, by the wrong role, or with a forged device signature"
    f, t = w.factory, s.t
    rogue = TestPKI(seed="forger").organisation("rogue-dsp", DCC_EUI, ROLE_DSP_XML_SIGN)
    esme, ch, mpan = w.meter(119)
    s.observe("09:50:30", f.activate_response(esme, 7010, t("09:50:30"),
                                              signer=Signer(rogue.private_key, rogue.certificate)),
              "11.3 response signed by an unknown key")  # fmt: skip
    s.inline("09:55:00", f.ad1(ch, mpan, t("09:52:00"), t("09:55"), 1119), "forward", "evidence-unverified",
             label="AD1 (forged evidence)")  # fmt: skip
    esme2, ch2, mpan2 = w.meter(120)
    s.observe("09:51:30", f.activate_response(esme2, 7011, t("09:51:30"), signer=w.dno_xml),
              "11.3 response signed by the DNO's XML key (wrong role)")  # fmt: skip
    s.inline("09:56:00", f.ad1(ch2, mpan2, t("09:53:00"), t("09:56"), 1120), "forward", "evidence-unverified",
             label="AD1 (wrong-role evidence)")  # fmt: skip
    return s


def storm(w: World, ad1s: int = 10_000, activations: int = 1_000, seed: int = 2021) -> Scenario:
    s = Scenario("storm", w)
    s.description = f"a storm: {ad1s} AD1s in an hour while {activations} meters activate firmware"
    f, t = w.factory, s.t
    rng = random.Random(seed)
    base = t("14:00")
    for k in range(ad1s):
        n = 100_000 + k
        esme, ch, mpan = w.meter(n, device_cert=k < activations)
        if k < activations:
            rt = base + (k * 3.6) * (t("00:00:01") - t("00:00:00"))
            s.observe(rt, f.activate_response(esme, 900_000 + k, rt))
            start = rt + rng.randint(120, 600) * (t("00:00:01") - t("00:00:00"))
            expect, reason = "suppress", "activation-window"
        else:
            start = base + rng.randint(0, 3599) * (t("00:00:01") - t("00:00:00"))
            expect, reason = "forward", "no-activation"
        arrive = start + rng.randint(180, 900) * (t("00:00:01") - t("00:00:00"))
        s.inline(arrive, f.ad1(ch, mpan, start, arrive, 500_000 + k), expect, reason)
    s.steps.sort(key=lambda st: st.at)
    return s


SCENARIOS: dict[str, Callable[[World], Scenario]] = {
    "immediate-activation": immediate_activation,
    "future-dated-8f66-before-ad1": future_dated_8f66_before_ad1,
    "future-dated-8f66-after-ad1": future_dated_8f66_after_ad1,
    "failed-activation": failed_activation,
    "cancellation": cancellation,
    "genuine-outage-during-campaign": genuine_outage_during_campaign,
    "late-delivery": late_delivery,
    "duplicates": duplicates,
    "forged-evidence": forged_evidence,
    "storm": storm,
}


def build_library(world: World, names: list[str] | None = None) -> list[Scenario]:
    return [SCENARIOS[n](world) for n in (names or list(SCENARIOS))]
