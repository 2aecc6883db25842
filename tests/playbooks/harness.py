"""Running the real playbooks from tests: the project wheel, ansible-playbook with a log, inventories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
BIN = Path(sys.executable).parent


def build_wheel(dest: Path) -> Path:
    """``pip wheel --no-deps`` of this repository: what the worker_agent role installs."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dest), str(REPO)], check=True, capture_output=True, text=True)
    wheels = sorted(dest.glob("compute_pools-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dest}, found {wheels}"
    return wheels[0]


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_LOCAL_TEMP": str(Path(os.environ.get("TMPDIR", "/tmp")) / "ansible-local"),
        "PATH": f"{BIN}:{env.get('PATH', '')}",
    })
    env.update(extra or {})
    return env


def run_playbook(playbook: str, inventory: Path, log: Path, extra_vars: dict | None = None,
                 env: dict[str, str] | None = None, timeout: float = 900,
                 args: list[str] | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook with output appended to ``log``; returns the process (check returncode)."""
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOKS / playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    cmd += args or []
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd[:4])} ...\n")
        fh.flush()
        return subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, env=ansible_env(env), timeout=timeout,
                              cwd=PLAYBOOKS, text=True)


def tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
