"""SSH sessions to workers with paramiko, strict by default.

* Host keys are checked against a known_hosts file (default ``~/.ssh/known_hosts``): an unknown key
  is refused with its fingerprint unless ``accept_new`` (then it is appended, under a lock, as
  OpenSSH's ``StrictHostKeyChecking=accept-new`` does); a changed key is always refused.
* Keys come from the SSH agent, the inventory's / ``--identity`` key file, or ``~/.ssh/id_*``.
  Passwords are never asked for, stored or printed.
* A jump host is reached first and the target through a ``direct-tcpip`` channel of it (``-J``).
* Every failure becomes a :class:`NodeError` with one line that says what went wrong.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from worker.node.inventory import Target, parse_host

if TYPE_CHECKING:
    import paramiko

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
# paramiko logs a failed handshake at ERROR from its transport thread; our one line per host says it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False
_known_hosts_lock = threading.Lock()
# Set on Ctrl-C: every running command (e.g. logs --follow) ends and its host reports "interrupted".
CANCEL = threading.Event()


class NodeError(Exception):
    """One line for the result table: what failed on this host."""


@dataclass(frozen=True)
class SSHOptions:
    known_hosts: Path = DEFAULT_KNOWN_HOSTS
    accept_new: bool = False
    identity: Path | None = None
    use_agent: bool = True
    jump: str | None = None
    user: str | None = None  # when neither the inventory nor --host names one
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    become: bool = False


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


def fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint  # "SHA256:…", as ssh-keygen -l prints it


def known_hosts_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


class _HostKeyPolicy:
    """paramiko calls ``missing_host_key`` only for a host not in known_hosts (a changed key raises
    BadHostKeyException before)."""

    def __init__(self, options: SSHOptions, path: Path) -> None:
        self.options = options
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if not self.options.accept_new:
            raise NodeError(f"unknown host key {key.get_name()} {fingerprint(key)} for {hostname} (not in "
                            f"{self.path}); check it, then rerun with --accept-new-host-keys")
        from paramiko.hostkeys import HostKeyEntry

        line = HostKeyEntry([hostname], key).to_line()
        with _known_hosts_lock:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(line)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _client(options: SSHOptions) -> paramiko.SSHClient:
    import paramiko

    path = options.known_hosts.expanduser()
    client = paramiko.SSHClient()
    with _known_hosts_lock:
        if path.exists():
            try:
                client.load_host_keys(str(path))
            except (OSError, paramiko.SSHException) as exc:
                raise NodeError(f"cannot read known_hosts {path}: {exc}") from None
    client.set_missing_host_key_policy(_HostKeyPolicy(options, path))  # type: ignore[arg-type]
    return client


def _connect(client: paramiko.SSHClient, target: Target, options: SSHOptions, sock=None) -> None:
    import paramiko

    user = target.user or options.user
    where = f"{user + '@' if user else ''}{target.address}:{target.port}"
    key = options.identity or (Path(target.key_file) if target.key_file else None)
    if key is not None and not key.expanduser().exists():
        raise NodeError(f"identity file {key} does not exist")
    try:
        client.connect(
            target.address, port=target.port, username=user or None, sock=sock,
            key_filename=str(key.expanduser()) if key else None,
            allow_agent=options.use_agent, look_for_keys=key is None,
            timeout=options.connect_timeout, banner_timeout=options.connect_timeout,
            auth_timeout=options.connect_timeout, channel_timeout=options.connect_timeout,
        )
    except NodeError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise NodeError(f"host key mismatch for {where}: known_hosts has {fingerprint(exc.expected_key)}, the "
                        f"host offers {fingerprint(exc.key)} — refused (if the host was rebuilt: "
                        f"ssh-keygen -R '{known_hosts_name(target.address, target.port)}')") from None
    except paramiko.AuthenticationException:
        tried = [f"key {key}" if key else "~/.ssh/id_* keys"] + (["the SSH agent"] if options.use_agent else [])
        raise NodeError(f"authentication failed for {where} (tried {' and '.join(tried)})") from None
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        reasons = {str(e.strerror or e).lower() for e in exc.errors.values()}
        raise NodeError(f"unreachable: {where}: {', '.join(sorted(reasons))}") from None
    except TimeoutError:
        raise NodeError(f"unreachable: {where}: no answer within {options.connect_timeout:g}s") from None
    except paramiko.SSHException as exc:
        text = str(exc)
        if "no authentication methods" in text.lower():
            raise NodeError(f"authentication failed for {where}: no key to offer (give --identity, an inventory "
                            "key file or an SSH agent)") from None
        # A dead transport (no banner in time, or not SSH at all) surfaces as any of these.
        if any(w in text.lower() for w in ("banner", "timeout", "timed out", "no existing session")):
            raise NodeError(f"unreachable: {where}: no SSH handshake within {options.connect_timeout:g}s") from None
        raise NodeError(f"SSH failed for {where}: {text}") from None
    except OSError as exc:
        raise NodeError(f"unreachable: {where}: {exc.strerror or exc}") from None


class Session:
    """One connected host (through the jump host, if any)."""

    def __init__(self, target: Target, options: SSHOptions) -> None:
        self.target = target
        self.options = options
        self._clients: list[paramiko.SSHClient] = []

    def __enter__(self) -> Self:
        try:
            sock = None
            if self.options.jump:
                bastion = parse_host(self.options.jump)
                # Same key as the target unless --identity says otherwise (the usual bastion set-up).
                bastion = dataclasses.replace(bastion, key_file=self.target.key_file)
                jump = _client(self.options)
                self._clients.append(jump)
                try:
                    _connect(jump, bastion, self.options)
                except NodeError as exc:
                    raise NodeError(f"jump host: {exc}") from None
                transport = jump.get_transport()
                assert transport is not None
                try:
                    sock = transport.open_channel("direct-tcpip", (self.target.address, self.target.port),
                                                  ("127.0.0.1", 0), timeout=self.options.connect_timeout)
                except Exception as exc:  # noqa: BLE001 - paramiko's ChannelException and friends
                    raise NodeError(f"unreachable: {self.target.where} via jump host {self.options.jump}: "
                                    f"{exc}") from None
            client = _client(self.options)
            self._clients.append(client)
            _connect(client, self.target, self.options, sock=sock)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for client in reversed(self._clients):
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()

    @property
    def client(self) -> paramiko.SSHClient:
        return self._clients[-1]

    # -- commands ----------------------------------------------------------------------------------
    def run(self, command: str, timeout: float | None = None, on_line: Callable[[str], None] | None = None,
            ) -> CommandResult:
        """Run ``command`` (already prefixed for --become by the caller) and collect its output;
        ``on_line`` streams stdout lines as they come (``timeout`` None: the options' timeout; 0: none)."""
        limit = self.options.command_timeout if timeout is None else timeout
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise NodeError("the SSH connection is closed")
        channel = transport.open_session(timeout=self.options.connect_timeout)
        try:
            channel.exec_command(command)
            out, err = bytearray(), bytearray()
            pending = b""
            deadline = time.monotonic() + limit if limit else None
            while True:
                got = False
                if channel.recv_ready():
                    chunk = channel.recv(65536)
                    out += chunk
                    got = True
                    if on_line is not None:
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            on_line(line.decode(errors="replace"))
                if channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    got = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if CANCEL.is_set():
                    raise NodeError("interrupted")
                if deadline is not None and time.monotonic() > deadline:
                    raise NodeError(f"command timed out after {limit:g}s: {_short(command)}")
                if not got:
                    time.sleep(0.02)
            if on_line is not None and pending:
                on_line(pending.decode(errors="replace"))
            return CommandResult(channel.recv_exit_status(), out.decode(errors="replace"),
                                 err.decode(errors="replace"))
        finally:
            channel.close()

    def check(self, command: str, what: str, timeout: float | None = None) -> CommandResult:
        """Run and raise a one-line NodeError when the command exits non-zero."""
        result = self.run(command, timeout)
        if result.exit_code != 0:
            raise NodeError(f"{what} failed with exit code {result.exit_code}: {last_line(result)}")
        return result

    def upload(self, local: Path, remote: str) -> None:
        try:
            with self.client.open_sftp() as sftp:
                sftp.put(str(local), remote)
        except OSError as exc:
            raise NodeError(f"upload of {local.name} to {remote} failed: {exc.strerror or exc}") from None


def last_line(result: CommandResult) -> str:
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return _short(text[-1]) if text else "no output"


def _short(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@contextlib.contextmanager
def session(target: Target, options: SSHOptions) -> Iterator[Session]:
    with Session(target, options) as s:
        yield s
