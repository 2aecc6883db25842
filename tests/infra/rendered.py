"""The custom data the Pulumi program renders for a stack config, taken from the program under mocks.

The first-boot proofs (tests/playbooks/test_first_boot.py) seed cloud-init with exactly this text. The
only thing the mocks decide is what Azure would answer to ``listQueueKeys``: here, the connection
string of a real queue policy on the local emulator, so the booted agent reaches the host's queues.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pulumi

from tests.infra.harness import Deployment, Mocks, deploy, usable_event_loop


class _QueueKeyMocks(Mocks):
    def __init__(self, deployment: Deployment, queue_key: Callable[[str, str], str | None]):
        super().__init__(deployment)
        self.queue_key = queue_key

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "azure-native:servicebus:listQueueKeys":
            rule, queue = args.args["authorizationRuleName"], args.args["queueName"]
            text = self.queue_key(rule, queue)
            if text is not None:
                self.deployment.calls.append((args.token, dict(args.args)))
                return {"primaryConnectionString": text, "keyName": rule}
        return super().call(args)


def render_custom_data(config: dict[str, Any], queue_key: Callable[[str, str], str | None]) -> str:
    """Run the whole program (infra.program.build) for ``config`` and return the scale set's custom
    data, decoded. ``queue_key(rule, queue)`` answers listQueueKeys (None: the harness default)."""
    from infra.program import build
    from tests.infra.conftest import reveal
    from worker.stackconfig import parse_stack_config

    usable_event_loop()

    class Answering(_QueueKeyMocks):
        def __init__(self, deployment: Deployment):
            super().__init__(deployment, queue_key)

    deployment = deploy(build, parse_stack_config(config), location="westeurope", mocks=Answering)
    vmss = deployment.one("compute:VirtualMachineScaleSet")
    encoded = reveal(vmss.inputs)["virtualMachineProfile"]["osProfile"]["customData"]
    return base64.b64decode(encoded).decode()
