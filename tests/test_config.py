"""The agent config format: defaults, sizes, naming rules and clear errors."""

import pytest

from worker.config import (
    AgentConfig,
    ConfigError,
    competition_containers,
    competition_queues,
    dump_agent_config,
    load_agent_config,
    parse_size,
)

MINIMAL = """
servicebus:
  task_queue: comp-demo-tasks
  response_queue: comp-demo-responses
  task_queue_connection_string: "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=worker;SharedAccessKey=k;EntityPath=comp-demo-tasks;UseDevelopmentEmulator=true"
  response_queue_connection_string: "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=worker;SharedAccessKey=k;EntityPath=comp-demo-responses;UseDevelopmentEmulator=true"
work_dir: /tmp/pool-work
cache: {max_bytes: 2GiB}
execution:
  limits: {memory_bytes: 512MiB}
"""


def test_minimal_config_loads_with_defaults(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(MINIMAL)
    config = load_agent_config(path)
    assert config.cache.max_bytes == 2 * 1024**3
    assert config.execution.limits.memory_bytes == 512 * 1024**2
    assert config.execution.driver == "process"
    assert str(config.resolved_cache_dir()) == "/tmp/cache"


def test_dump_round_trips(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(MINIMAL)
    config = load_agent_config(path)
    path.write_text(dump_agent_config(config))
    assert load_agent_config(path) == config


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("servicebus: {task_queue: a, response_queue: b}", "task_queue_connection_string"),
        ("servicebus: {auth: managed_identity, task_queue: a, response_queue: b}", "fully_qualified_namespace"),
        (MINIMAL + "surprise: 1\n", "surprise"),
        (MINIMAL.replace("2GiB", "lots"), "not a size"),
        ("- a list", "mapping"),
        ("servicebus: [unclosed", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_agent_config(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_agent_config(tmp_path / "nope.yaml")


def test_sizes():
    assert parse_size("512 MB") == 512_000_000
    assert parse_size("1KiB") == 1024
    assert parse_size(7) == 7


def test_naming():
    assert competition_queues("comp-demo") == ("comp-demo-tasks", "comp-demo-responses")
    assert competition_containers("x" * 50)["outputs"] == "x" * 50 + "-outputs"
    for bad in ("ab", "x" * 51, "-abc", "abc-", "a--b", "Abc"):
        with pytest.raises(ConfigError):
            competition_queues(bad)


def test_identity_mode_needs_no_connection_strings():
    config = AgentConfig.model_validate({"servicebus": {
        "auth": "managed_identity", "task_queue": "a", "response_queue": "b",
        "fully_qualified_namespace": "ns.servicebus.windows.net"}})
    assert config.servicebus.task_queue_connection_string is None
