"""Alerts reach people deduplicated: opened once, re-sent only when worse or new after a
while, resolved once (``runtime/alerts.py``)."""

from __future__ import annotations

import pytest

from agentaskit_dr.core import Alert, Severity
from agentaskit_dr.ports import Notification
from agentaskit_dr.runtime.alerts import AlertRouter

CRIT, WARN, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO


class Rig:
    def __init__(self) -> None:
        self.now = 0.0
        self.sent: list[Notification] = []
        self.router = AlertRouter(self.sent.append, node="west", clock=lambda: self.now,
                                  repeat_after=300.0)

    def at(self, now: float, alert: Alert) -> bool:
        self.now = now
        return self.router.route(alert, epoch=4)


def test_an_alert_opens_once_and_its_repeats_are_not_sent() -> None:
    rig = Rig()
    assert rig.at(0, Alert(CRIT, "partial partition", key="assessment"))
    for second in range(1, 200):
        assert not rig.at(second, Alert(CRIT, "partial partition", key="assessment"))
    [sent] = rig.sent
    assert (sent.event, sent.severity, sent.resolve, sent.epoch) == ("alert", "critical",
                                                                     False, 4)
    assert sent.dedup_key == "agentaskit-dr/west/assessment"
    assert "partial partition" in sent.summary
    assert rig.router.open_alerts == {"assessment": "partial partition"}


def test_a_worse_alert_of_an_open_key_is_sent_at_once() -> None:
    rig = Rig()
    rig.at(0, Alert(WARN, "degraded", key="assessment"))
    assert rig.at(1, Alert(CRIT, "primary down", key="assessment"))
    assert [n.severity for n in rig.sent] == ["warning", "critical"]


@pytest.mark.parametrize(("later", "sent"), [(299.0, 1), (300.0, 2)])
def test_a_new_message_of_an_open_key_is_sent_only_after_repeat_after(
    later: float, sent: int,
) -> None:
    rig = Rig()
    rig.at(0, Alert(CRIT, "self-fence failed: timeout", key="self_fence"))
    rig.at(later, Alert(CRIT, "self-fence failed: too many connections", key="self_fence"))
    assert len(rig.sent) == sent


def test_a_resolve_closes_the_key_once_and_a_new_alert_opens_it_again() -> None:
    rig = Rig()
    rig.at(0, Alert(CRIT, "lock lost", key="lock"))
    assert rig.at(5, Alert(INFO, "lock held again", key="lock", resolve=True))
    assert not rig.at(6, Alert(INFO, "lock held again", key="lock", resolve=True))
    assert rig.at(7, Alert(CRIT, "lock lost", key="lock"))
    assert [(n.resolve, n.dedup_key) for n in rig.sent] == [
        (False, "agentaskit-dr/west/lock"), (True, "agentaskit-dr/west/lock"),
        (False, "agentaskit-dr/west/lock")]


def test_a_resolve_of_a_key_never_opened_sends_nothing() -> None:
    rig = Rig()
    assert not rig.at(0, Alert(INFO, "cleared: healthy", key="assessment", resolve=True))
    assert rig.sent == []


def test_alerts_without_a_key_are_only_logged() -> None:
    rig = Rig()
    assert not rig.at(0, Alert(CRIT, "failing over: db_unreachable"))
    assert rig.sent == []
    assert rig.router.open_alerts == {}


def test_keys_are_independent() -> None:
    rig = Rig()
    rig.at(0, Alert(CRIT, "lock lost", key="lock"))
    rig.at(1, Alert(CRIT, "fence refused", key="fence"))
    rig.at(2, Alert(INFO, "old primary fenced", key="fence", resolve=True))
    assert rig.router.open_alerts == {"lock": "lock lost"}
    assert len(rig.sent) == 3
