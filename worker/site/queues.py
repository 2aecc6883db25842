"""The site's Service Bus clients: one client per connection string, senders kept open (a link
attach costs ~0.5 s), all safe to share between threads."""

from __future__ import annotations

import threading
from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusSender

from worker.protocol import Task
from worker.servicebus import client_kwargs
from worker.wire import task_message


class SiteQueues:
    def __init__(self, namespace_connection_string: str | None = None) -> None:
        self.namespace_connection_string = namespace_connection_string
        self._clients: dict[str, ServiceBusClient] = {}
        self._senders: dict[tuple[str, str], ServiceBusSender] = {}
        self._send_locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def client(self, connection_string: str | None) -> ServiceBusClient:
        cs = connection_string or self.namespace_connection_string
        if not cs:
            raise ValueError("no Service Bus connection string for this pool and no namespace-level one")
        with self._lock:
            if cs not in self._clients:
                self._clients[cs] = ServiceBusClient.from_connection_string(cs, **client_kwargs())
            return self._clients[cs]

    def send_task(self, connection_string: str | None, queue: str, task: Task) -> None:
        message = task_message(task)
        key = (connection_string or "", queue)
        with self._lock:
            lock = self._send_locks.setdefault(key, threading.Lock())
        with lock:  # a sender is one AMQP link: one send at a time
            sender = self._senders.get(key)
            if sender is None:
                sender = self.client(connection_string).get_queue_sender(queue)
                self._senders[key] = sender
            try:
                sender.send_messages(message)
            except Exception:
                # Drop the link; the next send opens a fresh one (the SDK already retried).
                self._senders.pop(key, None)
                _close_quietly(sender)
                raise

    def close(self) -> None:
        with self._lock:
            senders, clients = list(self._senders.values()), list(self._clients.values())
            self._senders.clear()
            self._clients.clear()
        for item in [*senders, *clients]:
            _close_quietly(item)


def _close_quietly(item: Any) -> None:
    try:
        item.close()
    except Exception:  # noqa: BLE001, S110 - closing a broken link must not hide the real error
        pass
