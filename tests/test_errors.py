"""One exception root: every error we raise on purpose is a PoolError and keeps its built-in base."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from worker.agent.errors import InfrastructureError
from worker.cli import app
from worker.config import ConfigError as AgentConfigError
from worker.emulator.config import ConfigError as EmulatorConfigError
from worker.errors import ConfigError, PoolError, TaskRejected
from worker.execution.archive import ArchiveError
from worker.execution.base import DriverUnavailable
from worker.execution.cgroups import CgroupError
from worker.execution.docker import build_run_command
from worker.local.stack import StackError
from worker.protocol import ProtocolError
from worker.site.pools import UnknownPool
from worker.site.producer import SubmitError


@pytest.mark.parametrize(("error", "builtin"), [
    (ConfigError, ValueError), (TaskRejected, ValueError), (ProtocolError, ValueError), (ArchiveError, ValueError),
    (InfrastructureError, RuntimeError), (DriverUnavailable, RuntimeError), (StackError, RuntimeError),
    (SubmitError, RuntimeError), (CgroupError, OSError), (UnknownPool, LookupError),
])
def test_every_error_has_the_root_and_its_builtin_base(error, builtin):
    assert issubclass(error, PoolError) and issubclass(error, builtin)


def test_one_config_error():
    assert AgentConfigError is EmulatorConfigError is ConfigError


def test_a_driver_rejects_a_task_it_cannot_run_with_a_typed_error():
    from worker.execution.base import ExecutionSpec

    spec = ExecutionSpec(task_id="t", argv=["true"], scratch_dir=Path("/tmp/s"), output_dir=Path("/tmp/o"))
    with pytest.raises(TaskRejected, match="needs an image"):
        build_run_command(spec, "x")


def test_the_cli_prints_a_pool_error_as_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "agent.yaml"
    bad.write_text("servicebus: {}\n")
    result = CliRunner().invoke(app, ["agent", "--config", str(bad), "--check"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output
