"""Workers install the core distribution only: python-qpid-proton (no Linux wheel, it compiles) is
in the `local` extra, so nothing a worker runs may import it, and `pool emulator` says what to install."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bare_wheel_install_runs_the_agent_without_the_site_extra(tmp_path):
    """The wheel with NO extras, in a fresh venv (core dependencies from PyPI): `pool agent --help`
    works, the agent's modules import, and SQLAlchemy/Alembic (the `site` extra) are not there."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name) if src.exists() else (src.mkdir(), shutil.copy(ROOT / name, src / name))
    shutil.copytree(ROOT / "worker", src / "worker", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, timeout=300)
    (wheel,) = wheels.glob("compute_pools-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    help_ = subprocess.run([venv / "bin" / "pool", "agent", "--help"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=120, check=False)
    assert help_.returncode == 0, help_.stderr
    assert "--config" in help_.stdout
    probe = subprocess.run(
        [venv / "bin" / "python", "-c",
         ("import importlib.util as u, worker.agent.worker, worker.execution.process, worker.wire; "
         "print(worker.agent.worker.__file__); "
         "print([m for m in ('sqlalchemy', 'alembic', 'proton', 'pulumi') if u.find_spec(m)])")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)
    assert probe.returncode == 0, probe.stderr
    where, missing = probe.stdout.splitlines()
    assert where.startswith(str(venv)) and missing == "[]"


def test_the_site_needs_the_site_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "sqlalchemy" not in core and "alembic" not in core
    extras = project["optional-dependencies"]
    assert any(d.startswith("sqlalchemy") for d in extras["site"]) and any(d.startswith("alembic") for d in extras["site"])
    assert "site" in extras["dev"][0]
