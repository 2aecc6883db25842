"""Pieces with no server behind them: credentials, effective limits, message bodies."""

from __future__ import annotations

import pytest
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from worker.agent.limits import effective_limits
from worker.config import parse_agent_config
from worker.protocol import ProtocolError, Resources, Task
from worker.servicebus import make_credential, response_client, task_client
from worker.wire import message_body

NS = "comp-demo.servicebus.windows.net"


def identity_config(auth: str, client_id: str | None = None):
    sb = {"auth": auth, "task_queue": "comp-demo-tasks", "response_queue": "comp-demo-responses",
          "fully_qualified_namespace": NS}
    if client_id:
        sb["managed_identity_client_id"] = client_id
    return parse_agent_config({"servicebus": sb})


def test_managed_identity_clients_untested_against_azure():
    """The identity path builds real SDK clients; no token is fetched until a link opens."""
    config = identity_config("managed_identity", client_id="11111111-2222-3333-4444-555555555555")
    credential = make_credential(config.servicebus)
    assert isinstance(credential, ManagedIdentityCredential)
    for factory in (task_client, response_client):
        client = factory(config.servicebus)
        assert client.fully_qualified_namespace == NS
        assert client._credential is not None
        client.close()


def test_default_azure_credential():
    config = identity_config("default_azure_credential")
    assert isinstance(make_credential(config.servicebus), DefaultAzureCredential)


def test_connection_string_has_no_identity():
    config = parse_agent_config({"servicebus": {
        "task_queue": "q", "response_queue": "r",
        "task_queue_connection_string": "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=w;SharedAccessKey=k;"
                                        "UseDevelopmentEmulator=true",
        "response_queue_connection_string": "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=w;"
                                            "SharedAccessKey=k;UseDevelopmentEmulator=true"}})
    with pytest.raises(ValueError):
        make_credential(config.servicebus)
    client = task_client(config.servicebus)
    assert client.fully_qualified_namespace == "127.0.0.1:5672"
    client.close()


def make_task(**kwargs) -> Task:
    return Task(task_id="t", competition="comp-demo", command=["x"], stdout_url="u", stderr_url="u",
                reply_to="r", **kwargs)


def test_effective_limits_are_the_smaller_of_request_and_ceiling():
    config = parse_agent_config({
        "servicebus": {"auth": "managed_identity", "task_queue": "q", "response_queue": "r",
                       "fully_qualified_namespace": NS},
        "execution": {"limits": {"memory_bytes": "1GiB", "max_time_limit_s": 100, "scratch_bytes": "2GiB"}}})
    small = effective_limits(make_task(time_limit_s=10, resources=Resources(memory_mb=256, disk_mb=100)), config)
    assert (small.wall_time_s, small.memory_bytes, small.scratch_bytes) == (10, 256 * 2**20, 100 * 2**20)
    big = effective_limits(make_task(time_limit_s=1000, resources=Resources(memory_mb=10_000)), config)
    assert (big.wall_time_s, big.memory_bytes, big.scratch_bytes) == (100, 2**30, 2 * 2**30)


class FakeMessage:  # only the attribute message_body reads; the SDK's own class is used in the loop tests
    def __init__(self, body):
        self.body = body


def test_message_body_shapes():
    assert message_body(FakeMessage(iter([b"ab", b"c"]))) == b"abc"
    assert message_body(FakeMessage("text")) == b"text"
    with pytest.raises(ProtocolError) as info:
        message_body(FakeMessage({"a": 1}))
    assert info.value.reason == "MalformedMessage"


def test_workspace_bundles_become_read_only_for_everyone(tmp_path):
    import os
    import stat

    from worker.agent.workspace import Workspace, make_read_only, remove_tree

    ws = Workspace(tmp_path / "work", make_task())
    ws.create()
    (ws.program / "sub").mkdir()
    secret = ws.program / "sub" / "run.sh"
    secret.write_text("echo")
    os.chmod(secret, 0o700)
    make_read_only(ws.program)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o544
    assert stat.S_IMODE((ws.program / "sub").stat().st_mode) == 0o555
    remove_tree(ws.root)  # read-only directories are removed all the same
    assert not ws.root.exists()
