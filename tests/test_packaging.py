"""Workers install the core distribution only: python-qpid-proton (no Linux wheel, it compiles) is
in the `local` extra, so nothing a worker runs may import it, and `pool emulator` says what to install."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WITHOUT_PROTON = """
import sys
sys.modules["proton"] = None  # as if python-qpid-proton were not installed
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_PROTON + code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)


def test_proton_is_only_in_the_local_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("python-qpid-proton") for d in project["dependencies"])
    assert any(d.startswith("python-qpid-proton") for d in project["optional-dependencies"]["local"])


def test_the_worker_runs_without_proton():
    result = run("import worker.cli, worker.agent.worker, worker.execution.bwrap, worker.execution.process; "
                 "print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_pool_emulator_without_proton_says_what_to_install():
    result = run("from typer.testing import CliRunner; from worker.cli import app; "
                 "r = CliRunner().invoke(app, ['emulator', '--config', 'worker/emulator/sample-config.yaml']); "
                 "print(r.exit_code); print(r.output)")
    assert result.returncode == 0, result.stderr
    code, _, output = result.stdout.partition("\n")
    assert code == "2"
    assert "compute-pools[local]" in output
