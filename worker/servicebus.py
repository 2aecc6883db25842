"""Thin helpers over azure-servicebus: clients built from the agent's config, least rights.

The worker holds two credentials: Listen on its task queue and Send on its response queue. With
``auth: connection_string`` those are two queue-scoped SAS connection strings (or the local
emulator's, ``UseDevelopmentEmulator=true``). With ``managed_identity`` / ``default_azure_credential``
an Azure AD token from azure-identity is used against ``fully_qualified_namespace`` (RBAC roles
"Azure Service Bus Data Receiver/Sender" scoped to the two queues). The identity path is unit-tested
here but untested against real Azure.
"""

from __future__ import annotations

from typing import Any

from azure.servicebus import ServiceBusClient, ServiceBusReceiveMode, ServiceBusReceiver, ServiceBusSender

from worker.config import AuthMode, ServiceBusSettings

# Short, bounded SDK retries: the agent and the site have their own reconnect loops around them.
CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.5, "retry_backoff_max": 10}


def client_kwargs(**overrides: Any) -> dict[str, Any]:
    """The SDK options of every Service Bus client of ours (agent and site): short, bounded retries
    inside our own reconnect loops (:mod:`worker.reconnect`)."""
    return {**CLIENT_OPTIONS, **overrides}


def make_credential(settings: ServiceBusSettings) -> Any:
    """The azure-identity credential for the identity auth modes."""
    if settings.auth is AuthMode.MANAGED_IDENTITY:
        from azure.identity import ManagedIdentityCredential

        if settings.managed_identity_client_id:
            return ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
        return ManagedIdentityCredential()
    if settings.auth is AuthMode.DEFAULT_AZURE_CREDENTIAL:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=settings.managed_identity_client_id)
    raise ValueError(f"auth {settings.auth.value} does not use an Azure identity")


def _client(settings: ServiceBusSettings, connection_string: str | None, **options: Any) -> ServiceBusClient:
    kwargs = client_kwargs(**options)
    if settings.auth is AuthMode.CONNECTION_STRING:
        assert connection_string  # the config validator guarantees it
        return ServiceBusClient.from_connection_string(connection_string, **kwargs)
    assert settings.fully_qualified_namespace
    return ServiceBusClient(settings.fully_qualified_namespace, make_credential(settings), **kwargs)


def task_client(settings: ServiceBusSettings, **options: Any) -> ServiceBusClient:
    """Client allowed to Listen on the task queue (builds no connection until a receiver is used)."""
    return _client(settings, settings.task_queue_connection_string, **options)


def response_client(settings: ServiceBusSettings, **options: Any) -> ServiceBusClient:
    """Client allowed to Send on the response queue."""
    return _client(settings, settings.response_queue_connection_string, **options)


def task_receiver(client: ServiceBusClient, queue: str) -> ServiceBusReceiver:
    """One message at a time: PEEK_LOCK and no prefetch, so no other message's lock ticks away in a
    local buffer while this worker is busy (another worker takes it instead)."""
    return client.get_queue_receiver(queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0)


def status_sender(client: ServiceBusClient, queue: str) -> ServiceBusSender:
    return client.get_queue_sender(queue)
