"""``pool node``: operate worker machines over SSH (paramiko) — status, logs, drain/resume, restart,
upgrade the agent, run a command — on many hosts at once. Targets and SSH options come before the
command: ``pool node -i hosts.ini --limit 'gpu*' status``."""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

node_app = typer.Typer(
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Operate worker machines over SSH: status, logs, drain/resume, restart, upgrade-agent, exec. "
         "Targets: an Ansible inventory (`-i`, also $POOL_INVENTORY) and/or `--host user@name:port`, "
         "filtered by `--limit` (Ansible host patterns). Host keys are checked against known_hosts; "
         "see docs/operations.md.",
)


@dataclass
class Context:
    inventory: Path | None
    hosts: list[str]
    limit: str | None
    forks: int
    windows: bool
    options: object  # SSHOptions (paramiko is imported only when a command runs)


def _consoles():
    import os

    from rich.console import Console

    # A pipe gets wide lines (tables unwrapped for grep) unless COLUMNS says otherwise.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(width=width, highlight=False), Console(stderr=True, width=width, highlight=False)


@node_app.callback()
def node(
    ctx: typer.Context,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", "-i", envvar="POOL_INVENTORY", help="Ansible inventory file (INI or YAML).")] = None,
    host: Annotated[list[str] | None, typer.Option(
        "--host", "-H", help="A target as [user@]host[:port] (repeatable; added to the inventory's).")] = None,
    limit: Annotated[str | None, typer.Option(
        "--limit", "-l", help="Ansible host pattern: 'workers:!gpu-3', 'gpu*', 'web,db'.")] = None,
    forks: Annotated[int, typer.Option("--forks", "-f", min=1, help="Hosts worked on at once.")] = 10,
    user: Annotated[str | None, typer.Option(
        "--user", "-u", help="Login user where the inventory/--host names none.")] = None,
    identity: Annotated[Path | None, typer.Option(
        "--identity", help="Private key file (else the inventory's, the SSH agent and ~/.ssh/id_*).")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="Do not use the SSH agent's keys.")] = False,
    known_hosts: Annotated[Path, typer.Option(
        "--known-hosts", help="known_hosts file that host keys are checked against.")] = Path("~/.ssh/known_hosts"),
    accept_new_host_keys: Annotated[bool, typer.Option(
        "--accept-new-host-keys", help="First contact: add unknown host keys to known_hosts (a CHANGED key "
                                       "is still refused).")] = False,
    jump: Annotated[str | None, typer.Option(
        "--jump", "-J", help="Reach the targets through this bastion: [user@]host[:port].")] = None,
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", help="Seconds for TCP connect, SSH handshake and authentication.")] = 10,
    command_timeout: Annotated[float, typer.Option(
        "--command-timeout", help="Seconds one remote command may take.")] = 120,
    become: Annotated[bool, typer.Option(
        "--become", "-b", help="Run agent commands as root with `sudo -n` (never prompts). Linux only.")] = False,
    windows: Annotated[bool, typer.Option(
        "--windows", help="--host targets are Windows (PowerShell). Inventory hosts: ansible_shell_type=powershell "
                          "or os=windows. UNTESTED on Windows.")] = False,
) -> None:
    from worker.node.ssh import SSHOptions

    ctx.obj = Context(inventory, host or [], limit, forks, windows, SSHOptions(
        known_hosts=known_hosts, accept_new=accept_new_host_keys, identity=identity, use_agent=not no_agent,
        jump=jump, user=user, connect_timeout=connect_timeout, command_timeout=command_timeout, become=become))


def _targets(ctx: Context):
    from worker.node.inventory import InventoryError, select_targets

    try:
        return select_targets(ctx.inventory, ctx.hosts, ctx.limit, ctx.windows)
    except InventoryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _run(ctx: typer.Context, title: str, operation, outputs: bool = False, progress: bool = True) -> None:
    from worker.node.runner import print_outputs, print_table, run_many

    c: Context = ctx.obj
    targets = _targets(c)
    out, err = _consoles()
    results = run_many(targets, c.options, operation, c.forks, title, err, show_progress=progress)  # type: ignore[arg-type]
    if outputs:
        print_outputs(results, out)
    print_table(results, out, title)
    raise typer.Exit(0 if all(r.row.ok for r in results) else 1)


@node_app.command("list")
def list_(ctx: typer.Context) -> None:
    """List the target hosts (after --limit) and how they would be reached; connects to nothing."""
    from rich.table import Table

    c: Context = ctx.obj
    targets = _targets(c)
    out, _ = _consoles()
    table = Table(title=f"{len(targets)} host(s)", title_justify="left")
    for column in ("host", "address", "user", "port", "os", "key", "via"):
        table.add_column(column)
    options = c.options
    for t in targets:
        table.add_row(t.name, t.address, t.user or options.user or "(current user)", str(t.port),  # type: ignore[attr-defined]
                      "windows" if t.windows else "linux", str(options.identity or t.key_file or "agent/~/.ssh"),  # type: ignore[attr-defined]
                      options.jump or "-")  # type: ignore[attr-defined]
    out.print(table)


@node_app.command()
def status(ctx: typer.Context) -> None:
    """The agent on each host: service state, agent state (idle/busy/draining/drained/…), current task,
    tasks done/failed, version. Exit 1 if any host failed or its agent is not running."""
    from worker.node import ops

    _run(ctx, "pool node status", lambda s, r, step: ops.status(s, r))


@node_app.command()
def drain(
    ctx: typer.Context,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for each host's current task to end.")] = 0,
) -> None:
    """Let each agent finish its current task and take no new one (persists across agent restarts until
    `resume`). With --wait, a host still busy after it counts as failed."""
    from worker.node import ops

    _run(ctx, "pool node drain", lambda s, r, step: ops.drain(s, r, wait))


@node_app.command()
def resume(ctx: typer.Context) -> None:
    """Lift the drain: the agents take tasks again."""
    from worker.node import ops

    _run(ctx, "pool node resume", lambda s, r, step: ops.resume(s, r))


@node_app.command()
def restart(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds for the graceful stop (a running task may finish) and the start.")] = 600,
) -> None:
    """Restart the agent service gracefully (its task finishes within its shutdown grace) and wait until
    the new agent process is up."""
    from worker.node import ops

    _run(ctx, "pool node restart", lambda s, r, step: ops.restart(s, r, timeout))


@node_app.command()
def logs(
    ctx: typer.Context,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="How many of the last lines.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Keep printing new lines (Ctrl-C stops).")] = False,
) -> None:
    """The agent's journal (`journalctl -u pool-agent`; Windows: its agent.log). Usually needs --become.
    With --follow, lines of all hosts are printed as they come, prefixed with the host."""
    from worker.node import ops

    if not follow:
        _run(ctx, "pool node logs", lambda s, r, step: ops.logs(s, r, lines, False, None), outputs=True)
        return
    import threading

    out, _ = _consoles()
    lock = threading.Lock()

    def operation(s, r, step):
        def line(text: str) -> None:
            with lock:
                out.print(f"[bold]{s.target.name}[/] | " + text.replace("[", r"\["), soft_wrap=True)
        return ops.logs(s, r, lines, True, line)

    try:
        _run(ctx, "pool node logs --follow", operation, progress=False)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@node_app.command("upgrade-agent")
def upgrade_agent(
    ctx: typer.Context,
    wheel: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The compute_pools wheel to install.")],
    drain_timeout: Annotated[float, typer.Option(
        "--drain-timeout", help="Seconds to wait for a running task to end; a host still busy is skipped.")] = 3600,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for install, restart and start.")] = 600,
) -> None:
    """Upload WHEEL over SFTP, drain the agent and wait until it is idle, install the wheel into the agent's
    venv (no dependency changes), restart the service, lift the drain (unless the host was drained
    before) and wait until the agent is back. Usually needs --become."""
    if not wheel.name.endswith(".whl"):
        typer.echo(f"error: {wheel} is not a wheel (.whl)", err=True)
        raise typer.Exit(2)
    from worker.node import ops

    _run(ctx, "pool node upgrade-agent",
         lambda s, r, step: ops.upgrade_agent(s, r, wheel, drain_timeout, timeout, step))


@node_app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The command (after --), run by the login shell.")],
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds (default: --command-timeout).")] = None,
) -> None:
    """Run a command on every host (admin); prints each host's output, then the exit codes."""
    from worker.node import ops

    _run(ctx, "pool node exec", lambda s, r, step: ops.exec_(s, r, command, timeout), outputs=True)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
