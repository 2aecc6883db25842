"""The Windows role and image provide what the jobobject driver's availability check requires.

Read from the driver's own source (worker/execution/jobobject.py, win32api.py), not restated: the
environment variable holding the sandbox password, the default sandbox account, and the Win32
modules (pywin32) it imports. Each must be provided by the worker_agent role's Windows tasks (which
image-windows.yml runs) and checked by the image's Pester tests, so neither side can drift alone.
Everything Windows here is UNTESTED on Windows: these are static checks only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jinja2
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "playbooks/roles/worker_agent"
JOBOBJECT = REPO / "worker/execution/jobobject.py"
WIN32API = REPO / "worker/execution/win32api.py"
PESTER = REPO / "images/windows/tests/Worker.Tests.ps1"
# Modules of the pywin32 distribution (what `pip install pywin32` provides).
PYWIN32_MODULES = {"win32api", "win32con", "win32event", "win32file", "win32job", "win32process", "win32security",
                   "win32service", "win32profile", "pywintypes", "win32pipe", "win32ts"}


def _driver_requirements() -> dict:
    tree = ast.parse(JOBOBJECT.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "JobObjectDriver")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    kwonly = {a.arg: d for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True)}
    account = ast.literal_eval(kwonly["account"])
    env = [ast.literal_eval(call.args[0]) for call in ast.walk(init) if isinstance(call, ast.Call)
           and isinstance(call.func, ast.Attribute) and call.func.attr == "get"
           and ast.unparse(call.func.value) == "os.environ"]
    check = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "check_available")
    hints = [ast.literal_eval(s) for s in ast.walk(check) if isinstance(s, ast.Constant) and isinstance(s.value, str)]
    api = ast.parse(WIN32API.read_text())
    pyapi = next(n for n in api.body if isinstance(n, ast.ClassDef) and n.name == "PyWin32Api")
    modules = {alias.name for n in ast.walk(pyapi) if isinstance(n, ast.Import) for alias in n.names}
    return {"account": account, "env": env, "hints": hints, "modules": modules - {"msvcrt"}}


def _defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults/main.yml").read_text())


def _windows_tasks() -> list[dict]:
    return yaml.safe_load((ROLE / "tasks/windows.yml").read_text())


def test_driver_requirements_are_read_from_its_source():
    req = _driver_requirements()
    assert req["account"] == "pool-sandbox"
    assert req["env"] == ["POOL_SANDBOX_PASSWORD"]
    assert any("pywin32" in h for h in req["hints"])
    assert req["modules"] and req["modules"] <= PYWIN32_MODULES, req["modules"]


def test_role_installs_pywin32_into_the_agents_venv():
    defaults = _defaults()
    assert defaults["worker_agent_win_pywin32"].startswith("pywin32")
    task = next(t for t in _windows_tasks() if "pywin32" in t["name"])
    argv = task["ansible.windows.win_command"]["argv"]
    assert argv[0] == "{{ worker_agent_win_dir }}/venv/Scripts/python.exe" and argv[1:4] == ["-m", "pip", "install"]
    assert "{{ worker_agent_win_pywin32 }}" in argv
    # The service runs that venv's python (so the agent imports that pywin32).
    nssm = next(t for t in _windows_tasks() if "community.windows.win_nssm" in t)["community.windows.win_nssm"]
    assert nssm["application"] == "{{ worker_agent_win_dir }}/venv/Scripts/python.exe"


def test_role_creates_the_sandbox_account_and_hands_its_password_to_the_agent():
    req, defaults = _driver_requirements(), _defaults()
    assert defaults["worker_agent_win_sandbox_account"] == req["account"]
    assert defaults["worker_agent_win_sandbox_password_env"] == req["env"][0]
    task = next(t for t in _windows_tasks() if "sandbox account" in t["name"])
    body = task["ansible.windows.win_powershell"]
    assert body["parameters"]["Account"] == "{{ worker_agent_win_sandbox_account }}"
    script = body["script"]
    assert "New-LocalUser" in script and "RandomNumberGenerator" in script and task["no_log"] is True
    # Readable by the service account only (plus SYSTEM and Administrators), ACL set before the secret.
    assert re.search(r"icacls\.exe \$PasswordFile /inheritance:r /grant:r 'SYSTEM:F' 'Administrators:F' "
                     r'"\$\{ServiceUser\}:R"', script)
    assert script.index("icacls.exe") < script.index("Set-Content")
    assert body["parameters"]["ServiceUser"] == "{{ worker_agent_win_user }}"
    # The service's entry point reads that file into the variable the driver reads.
    nssm = next(t for t in _windows_tasks() if "community.windows.win_nssm" in t)["community.windows.win_nssm"]
    assert nssm["arguments"][0].endswith("start_agent.py")
    launcher = jinja2.Template((ROLE / "templates/start_agent.py.j2").read_text()).render(**{
        k: v for k, v in defaults.items() if k.startswith("worker_agent_win_sandbox")})
    compile(launcher, "start_agent.py", "exec")
    assert f'os.environ["{req["env"][0]}"] = Path(r"{defaults["worker_agent_win_sandbox_password_file"]}")' in launcher
    assert 'sys.argv = ["pool", "agent", *sys.argv[1:]]' in launcher


def test_driver_default_follows_the_os_in_role_and_program():
    from infra.custom_data import DEFAULT_DRIVER

    expr = _defaults()["worker_agent_execution"]["driver"]
    render = jinja2.Environment().from_string(expr).render
    assert render(ansible_os_family="Windows") == "jobobject" == DEFAULT_DRIVER["windows"]
    assert render(ansible_os_family="Debian") == "bwrap" == DEFAULT_DRIVER["linux"]


def test_role_schedules_the_eviction_watcher_on_windows():
    tasks = _windows_tasks()
    copy = next(t for t in tasks if t["name"] == "Copy the termination watcher")["ansible.windows.win_copy"]
    assert (ROLE / copy["src"].replace("{{ role_path }}/", "")).resolve() == REPO / "infra/termination_watch.py"
    task = next(t for t in tasks if "community.windows.win_scheduled_task" in t)["community.windows.win_scheduled_task"]
    assert task["triggers"] == [{"type": "boot"}] and task["username"] == "SYSTEM" and task["enabled"] is True
    arguments = task["actions"][0]["arguments"]
    assert "termination_watch.py" in arguments and "Stop-Service -Name {{ worker_agent_service_name }}" in arguments


def test_image_runs_the_role_and_its_tests_check_each_item():
    playbook = yaml.safe_load((REPO / "playbooks/image-windows.yml").read_text())
    assert any(r["role"] == "worker_agent" for r in playbook[0]["roles"])
    assert "image-windows.yml" in (REPO / "images/windows/build.pkr.hcl").read_text()
    pester = PESTER.read_text()
    req = _driver_requirements()
    for module in sorted(req["modules"]):
        assert f"import {module}" in pester or module in pester, module
    for needle in (req["account"], req["env"][0], "sandbox-password.txt", "pool-termination-watch"):
        assert needle in pester, needle
