"""The agent tests' in-process pool (real emulator + Azurite) for the agent-over-SSH tests."""

from tests.agent.conftest import competition, pool, storage  # noqa: F401 - fixtures
