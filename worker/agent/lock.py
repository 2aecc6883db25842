"""Keeps a message's lock alive while its task runs — from the thread that owns the receiver.

Not AutoLockRenewer: the receiver (one AMQP connection) is used by one thread only, so renewals,
receives and settlements never interleave on it (interleaving from several threads is what breaks
the transfer ordering, see docs/agent.md). The lock is renewed when half of its remaining time is
gone; if it cannot be renewed before it expires the task is stopped: Service Bus will give the
message to another worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError, ServiceBusError

log = logging.getLogger(__name__)

MIN_PERIOD_S = 0.2
MAX_PERIOD_S = 30.0


def _now() -> datetime:
    return datetime.now(UTC)


def _seconds_left(message: ServiceBusReceivedMessage) -> float:
    until = message.locked_until_utc
    if until is None:
        return 60.0
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return (until - _now()).total_seconds()


class LockKeeper:
    def __init__(self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage) -> None:
        self.receiver = receiver
        self.message = message
        self.renewals = 0
        self.lost = False

    def next_wait(self) -> float:
        """Seconds until the next renewal is due."""
        return min(MAX_PERIOD_S, max(MIN_PERIOD_S, _seconds_left(self.message) / 2))

    def renew(self, on_lost: Callable[[str], None]) -> None:
        if self.lost:
            return
        try:
            self.receiver.renew_message_lock(self.message, timeout=max(1.0, min(10.0, _seconds_left(self.message))))
            self.renewals += 1
            return
        except MessageLockLostError as exc:
            reason = f"lock lost: {exc}"
        except ServiceBusError as exc:
            if _seconds_left(self.message) > MIN_PERIOD_S:
                log.warning("lock renewal failed, will retry: %s", exc)
                return
            reason = f"lock expired, renewal failed: {exc}"
        self.lost = True
        on_lost(reason)
