import pytest
from azure.servicebus import ServiceBusClient


@pytest.fixture
def client(emulator):
    """A sync SDK client with the namespace's Manage policy."""
    with ServiceBusClient.from_connection_string(emulator.connection_string()) as c:
        yield c


@pytest.fixture
def quick_client(emulator):
    """No SDK retries: for tests that expect an error (the SDK retries even non-retryable management
    errors with backoff, ~11 s)."""
    with ServiceBusClient.from_connection_string(emulator.connection_string(), retry_total=0) as c:
        yield c
