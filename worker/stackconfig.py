"""The stack config: what an organizer writes in ``Pulumi.<stack>.yaml``, validated with clear errors.

Every key lives in the ``pool`` namespace of the stack config (``pool:competition``, ``pool:servicebus``,
``pool:storage``, ``pool:workers``, …); structured values are YAML mappings. Queue properties use the
same snake_case names and defaults as the local Service Bus endpoint's YAML config, so one set of
numbers describes both the local namespace and the Azure one.

It lives in the installed package (pydantic, stdlib and ``worker.config`` only, no Pulumi): the Pulumi
program in ``infra/`` builds the stack from it, and the site's provisioning code validates a config file
with it before it ever starts the Pulumi CLI.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker import config
from worker.config import ConfigError, check_competition_name, parse_agent_config

CONFIG_NAMESPACE = "pool"

# Azure's rules for the names a stack may override (derived names are built to satisfy them).
STORAGE_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
NAMESPACE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{4,48}[A-Za-z0-9]$")
RESOURCE_GROUP_RE = re.compile(r"^[-\w._()]{0,89}[-\w_()]$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- ISO 8601 durations ----------------------------------------------------------------------------

def iso_duration(value: timedelta) -> str:
    """``timedelta(minutes=1)`` -> ``"PT1M"`` (the form Azure's ARM API takes)."""
    total = int(value.total_seconds())
    if total <= 0 or value.microseconds:
        raise ValueError(f"durations must be a positive whole number of seconds, not {value}")
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")


def _between(value: timedelta, low: timedelta, high: timedelta, what: str) -> timedelta:
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {iso_duration(low)} and {iso_duration(high)}, "
                         f"not {iso_duration(value) if value > timedelta(0) else value}")
    return value


def _within(bounds: dict[str, tuple[timedelta, timedelta]]) -> Any:
    """One field validator for every duration field named in ``bounds`` (field -> Azure's low, high)."""

    def check(cls: type, value: timedelta, info: ValidationInfo) -> timedelta:
        low, high = bounds[info.field_name]
        return _between(value, low, high, info.field_name)

    return field_validator(*bounds)(classmethod(check))


# --- Service Bus ------------------------------------------------------------------------------------

class QueueProperties(config.QueueProperties):
    """One queue's properties (the fields and defaults are the local endpoint's, from worker.config)
    within Azure's bounds."""

    # Azure's bounds (the local endpoint also allows shorter locks, for fast tests).
    _azure_bounds = _within({
        "lock_duration": (timedelta(seconds=5), timedelta(minutes=5)),
        "default_message_ttl": (timedelta(seconds=1), timedelta(days=10675199)),
        "duplicate_detection_history_time_window": (timedelta(seconds=20), timedelta(days=7)),
    })

    def arm_properties(self, sku: str) -> dict[str, Any]:
        """The Queue resource's arguments (snake_case as pulumi-azure-native takes them)."""
        props: dict[str, Any] = {
            "lock_duration": iso_duration(self.lock_duration),
            "max_delivery_count": self.max_delivery_count,
            "default_message_time_to_live": iso_duration(self.default_message_ttl),
            "dead_lettering_on_message_expiration": self.dead_lettering_on_message_expiration,
            "requires_duplicate_detection": self.requires_duplicate_detection,
        }
        if self.requires_duplicate_detection:
            props["duplicate_detection_history_time_window"] = iso_duration(
                self.duplicate_detection_history_time_window)
        if sku == "Premium":  # Basic and Standard have a fixed 256 KB limit and reject the property
            props["max_message_size_in_kilobytes"] = self.max_message_size_kb
        return props


def _task_queue_defaults() -> QueueProperties:
    # The site sends each attempt with message_id = task id + attempt: duplicate detection makes a
    # retried send harmless, and an expired task is kept (dead-lettered) so the monitor can report it.
    return QueueProperties(requires_duplicate_detection=True, dead_lettering_on_message_expiration=True)


class ExistingNamespace(_Strict):
    """A Service Bus namespace shared by several competitions (created elsewhere)."""

    name: str
    resource_group: str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_namespace_name(v)


class ServiceBusConfig(_Strict):
    sku: Literal["Basic", "Standard", "Premium"] = "Standard"
    namespace_name: str | None = None  # dedicated namespace name; default derived from the competition
    existing_namespace: ExistingNamespace | None = None
    task_queue: QueueProperties = Field(default_factory=_task_queue_defaults)
    response_queue: QueueProperties = Field(default_factory=QueueProperties)
    # With auth: managed_identity, SAS keys can be switched off entirely (dedicated namespace only).
    disable_local_auth: bool = False

    @field_validator("namespace_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else _check_namespace_name(v)

    @model_validator(mode="after")
    def _consistent(self) -> ServiceBusConfig:
        if self.existing_namespace and self.namespace_name:
            raise ValueError("set either namespace_name (a dedicated namespace) or existing_namespace, not both")
        if self.existing_namespace and self.disable_local_auth:
            raise ValueError("disable_local_auth applies to a dedicated namespace; change a shared one where "
                             "it is managed")
        for which in ("task_queue", "response_queue"):
            queue: QueueProperties = getattr(self, which)
            if self.sku == "Premium":
                if "max_message_size_kb" not in queue.model_fields_set:
                    queue.max_message_size_kb = 1024  # Premium's own default (and minimum)
                elif not 1024 <= queue.max_message_size_kb <= 102400:
                    raise ValueError(f"{which}.max_message_size_kb: Premium namespaces take 1024 to 102400")
            elif queue.max_message_size_kb != 256:
                raise ValueError(f"{which}.max_message_size_kb: {self.sku} namespaces have a fixed 256 KB "
                                 "limit; use sku: Premium for larger messages")
            if self.sku == "Basic" and queue.requires_duplicate_detection:
                raise ValueError(f"{which}.requires_duplicate_detection: the Basic tier has no duplicate "
                                 "detection; use sku: Standard")
        return self


def _check_namespace_name(v: str) -> str:
    if not NAMESPACE_RE.match(v) or v.endswith(("-sb", "-mgmt")):
        raise ValueError(f"namespace name {v!r}: use 6-50 letters, digits and hyphens, starting with a letter, "
                         "ending with a letter or digit (and not in -sb or -mgmt)")
    return v


# --- Storage ----------------------------------------------------------------------------------------

class StorageConfig(_Strict):
    account_name: str | None = None  # default derived from the competition (globally unique: a hash)
    sku: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_RAGRS",
                 "Standard_GZRS", "Standard_RAGZRS"] = "Standard_LRS"
    logs_retention_days: int = Field(default=30, ge=1, le=36500)
    outputs_retention_days: int = Field(default=90, ge=1, le=36500)
    # Public addresses (the site's egress) allowed through the storage firewall; workers reach the
    # account through their subnet's service endpoint. Everything else is denied.
    allowed_ip_ranges: list[str] = Field(default_factory=list)

    @field_validator("account_name")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        if v is not None and not STORAGE_ACCOUNT_RE.match(v):
            raise ValueError(f"storage account name {v!r}: use 3-24 lowercase letters and digits")
        return v

    @field_validator("allowed_ip_ranges")
    @classmethod
    def _ranges(cls, v: list[str]) -> list[str]:
        return [_public_ipv4_rule(item) for item in v]


_RFC1918 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")]


def _public_ipv4_rule(item: str) -> str:
    """Storage IP rules take public IPv4 addresses or CIDR ranges up to /30 (no /31, /32 or private)."""
    try:
        net = ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        raise ValueError(f"{item!r} is not an IPv4 address or CIDR range ({exc})") from None
    if net.version != 4 or net.is_loopback or net.is_link_local or net.is_multicast or net.is_unspecified \
            or any(net.subnet_of(block) for block in _RFC1918):
        raise ValueError(f"{item!r}: the storage firewall takes public IPv4 addresses and ranges only")
    if net.prefixlen == 31:
        raise ValueError(f"{item!r}: Azure storage rejects /31 ranges; list the two addresses")
    return str(net.network_address) if net.prefixlen == 32 else str(net)


# --- Workers ----------------------------------------------------------------------------------------

class MarketplaceImage(_Strict):
    publisher: str
    offer: str
    sku: str
    version: str = "latest"


# The system python3 of well-known marketplace images, by (publisher, offer), lowercase. The agent and
# the first-boot script (``pip wheel`` of this project) need Python >= MIN_PYTHON: an image listed here
# with an older one is rejected before anything is deployed. Unlisted images are not checked.
MIN_PYTHON = (3, 11)
KNOWN_IMAGE_PYTHON: dict[tuple[str, str], tuple[str, tuple[int, int]]] = {
    ("debian", "debian-10"): ("Debian 10", (3, 7)),
    ("debian", "debian-11"): ("Debian 11", (3, 9)),
    ("debian", "debian-12"): ("Debian 12", (3, 11)),
    ("debian", "debian-13"): ("Debian 13", (3, 13)),
    ("canonical", "ubuntuserver"): ("Ubuntu 18.04 or older", (3, 6)),
    ("canonical", "0001-com-ubuntu-server-focal"): ("Ubuntu 20.04", (3, 8)),
    ("canonical", "0001-com-ubuntu-server-jammy"): ("Ubuntu 22.04", (3, 10)),
    ("canonical", "ubuntu-24_04-lts"): ("Ubuntu 24.04", (3, 12)),
}


def marketplace_python_problem(image: MarketplaceImage) -> str | None:
    """Why ``image`` cannot run the agent (its known python3 is too old), or None."""
    known = KNOWN_IMAGE_PYTHON.get((image.publisher.lower(), image.offer.lower()))
    if known is None or known[1] >= MIN_PYTHON:
        return None
    name, python = known
    need = ".".join(map(str, MIN_PYTHON))
    return (f"{image.publisher}/{image.offer} ({name}) has Python {'.'.join(map(str, python))}; the agent and the "
            f"first-boot install need Python >= {need}: use Debian 12 (publisher Debian, offer debian-12, "
            "sku 12-gen2, the default) or Ubuntu 24.04 (publisher Canonical, offer ubuntu-24_04-lts, sku server)")


# Debian 12 is the Linux default: its python3 (3.11) runs the agent, and it is what the first-boot
# proof boots here (tests/playbooks/test_first_boot.py). Ubuntu 24.04 (python3 3.12) also fits.
DEFAULT_MARKETPLACE = {
    "linux": MarketplaceImage(publisher="Debian", offer="debian-12", sku="12-gen2"),
    "windows": MarketplaceImage(publisher="MicrosoftWindowsServer", offer="WindowsServer",
                                sku="2022-datacenter-azure-edition"),
}

_GALLERY_IMAGE_RE = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/galleries/[^/]+/images/[^/]+"
    r"(/versions/[^/]+)?$", re.IGNORECASE)


class InstallSettings(_Strict):
    """How a marketplace Linux image becomes a worker at first boot: cloud-init clones this repository
    (``source`` at ``ref``), builds the wheel and runs the install playbook against localhost."""

    # Required with a marketplace image: this repository's git URL. https:// for a real pool; file://
    # names a repository on the VM's own disk (a mirror baked into an image; the first-boot proof
    # points it at a copy of the checkout). Plain http:// and ssh:// are refused: unauthenticated or
    # needing keys the VM does not have.
    source: str | None = None
    ref: str = "main"
    playbook: str = "playbooks/install-worker.yml"
    extra_vars: dict[str, Any] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "file:///")):
            raise ValueError("install.source must be an https:// git URL (or file:///path to a repository on "
                             "the VM itself)")
        return v


class UpgradeConfig(_Strict):
    """How a new image (or any model change) reaches a scale set's running instances.

    ``Rolling`` (default): batches of new instances are created first (``max_surge``), then old ones
    are deleted; every deletion is announced as a Terminate scheduled event, so the termination
    watcher stops the agent, which finishes or hands back its task (lock abandoned) before Azure
    removes the VM. Azure requires a health signal for rolling upgrades: the Application Health
    extension probes ``health_port`` over TCP (default: SSH on Linux, RDP on Windows: "the VM is up").
    ``Manual``: nothing changes until an operator upgrades instances (``az vmss update-instances``).
    """

    mode: Literal["Manual", "Rolling"] = "Rolling"
    max_surge: bool = True  # new instances before old ones go: capacity never drops during a roll
    max_batch_instance_percent: int = Field(default=20, ge=5, le=100)
    max_unhealthy_instance_percent: int = Field(default=20, ge=5, le=100)
    max_unhealthy_upgraded_instance_percent: int = Field(default=20, ge=0, le=100)
    pause_time_between_batches: timedelta = timedelta(minutes=2)
    health_port: int | None = Field(default=None, ge=1, le=65535)  # default 22 (Linux) / 3389 (Windows)

    _bounds = _within({"pause_time_between_batches": (timedelta(seconds=1), timedelta(hours=1))})


HEALTH_PORT = {"linux": 22, "windows": 3389}


class WorkersConfig(_Strict):
    os: Literal["linux", "windows"]
    vm_size: str = "Standard_D2s_v5"
    min_instances: int = Field(default=0, ge=0, le=1000)
    max_instances: int = Field(default=4, ge=1, le=1000)
    # Autoscale: add instances while more than this many tasks wait per running instance ...
    messages_per_instance: int = Field(default=1, ge=1, le=1000)
    scale_out_step: int = Field(default=1, ge=1, le=100)
    scale_out_cooldown: timedelta = timedelta(minutes=3)
    # ... and remove one at a time, only after the task queue has been empty this long.
    scale_in_idle: timedelta = timedelta(minutes=15)
    scale_in_cooldown: timedelta = timedelta(minutes=10)
    # How long Azure waits after announcing a scale-in/eviction before deleting the VM: the worker
    # uses it to finish or hand back its current task (Azure allows 5 to 15 minutes).
    termination_notice: timedelta = timedelta(minutes=10)
    spot: bool = False
    spot_max_price: float = -1  # -1: pay up to the on-demand price, never evicted for price
    gallery_image_id: str | None = None  # our image (images/ -> Shared Image Gallery)
    marketplace_image: MarketplaceImage | None = None  # default when no gallery image is given
    install: InstallSettings = Field(default_factory=InstallSettings)
    upgrade: UpgradeConfig = Field(default_factory=UpgradeConfig)
    admin_username: str = "pooladmin"
    ssh_public_key: str | None = None  # Linux: required (password login is disabled)
    remote_access_cidr: str | None = None  # SSH (22) / WinRM over HTTPS (5986) from this range only
    address_space: str = "10.42.0.0/16"
    subnet_prefix: str = "10.42.0.0/20"
    os_disk_size_gb: int | None = Field(default=None, ge=30, le=4095)
    agent_config_path: str | None = None  # default: /etc/pool-agent/agent.yaml or C:\ProgramData\…
    agent_service: str = "pool-agent"
    # Any other AgentConfig fields (execution driver and limits, cache, intervals, log level).
    agent: dict[str, Any] = Field(default_factory=dict)

    _bounds = _within({
        "scale_out_cooldown": (timedelta(minutes=1), timedelta(weeks=1)),
        "scale_in_cooldown": (timedelta(minutes=1), timedelta(weeks=1)),
        "scale_in_idle": (timedelta(minutes=5), timedelta(hours=12)),
        "termination_notice": (timedelta(minutes=5), timedelta(minutes=15)),
    })

    @field_validator("gallery_image_id")
    @classmethod
    def _gallery(cls, v: str | None) -> str | None:
        if v is not None and not _GALLERY_IMAGE_RE.match(v):
            raise ValueError("gallery_image_id must be a Shared Image Gallery image or image version id: "
                             "/subscriptions/…/resourceGroups/…/providers/Microsoft.Compute/galleries/…/images/…"
                             "[/versions/…]")
        return v

    @field_validator("marketplace_image")
    @classmethod
    def _python(cls, v: MarketplaceImage | None) -> MarketplaceImage | None:
        problem = None if v is None else marketplace_python_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("remote_access_cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"remote_access_cidr {v!r} is not a CIDR range ({exc})") from None
        if net.prefixlen == 0:
            raise ValueError("remote_access_cidr must not be the whole internet; name the range you connect from")
        return str(net)

    @field_validator("address_space", "subnet_prefix")
    @classmethod
    def _private(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a CIDR range ({exc})") from None
        if not net.is_private:
            raise ValueError(f"{v!r} must be a private range")
        return str(net)

    @field_validator("agent")
    @classmethod
    def _agent(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("servicebus", "pool"):
            if key in v:
                raise ValueError(f"agent.{key} is set by the program (from the queues it creates); remove it")
        if "worker_id" in v:
            raise ValueError("agent.worker_id would be shared by every VM of the pool; leave it unset (each "
                             "worker uses <hostname>-<pid>)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> WorkersConfig:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances ({self.min_instances}) is above max_instances ({self.max_instances})")
        if self.gallery_image_id and self.marketplace_image:
            raise ValueError("set either gallery_image_id or marketplace_image, not both")
        if self.os == "linux" and not self.ssh_public_key:
            raise ValueError("ssh_public_key is required for Linux pools (password login is disabled)")
        if self.os == "windows" and not self.gallery_image_id:
            raise ValueError("Windows pools need gallery_image_id (the image built from images/windows): a "
                             "Windows VM cannot run the install playbook on itself at first boot")
        if self.os == "linux" and not self.gallery_image_id and not self.install.source:
            raise ValueError("install.source is required without gallery_image_id: the https git URL of this "
                             "repository (or your mirror), installed at first boot by the install playbook")
        if self.os == "windows" and self.ssh_public_key:
            raise ValueError("ssh_public_key applies to Linux pools; Windows pools use pool:admin_password")
        if self.spot_max_price != -1 and not (self.spot and self.spot_max_price > 0):
            raise ValueError("spot_max_price needs spot: true and a positive price (or -1)")
        if not ipaddress.ip_network(self.subnet_prefix).subnet_of(ipaddress.ip_network(self.address_space)):
            raise ValueError(f"subnet_prefix {self.subnet_prefix} is not inside address_space {self.address_space}")
        return self

    @property
    def image(self) -> MarketplaceImage | str:
        """The gallery image id, or the marketplace image (the OS default when none is given)."""
        return self.gallery_image_id or self.marketplace_image or DEFAULT_MARKETPLACE[self.os]

    @property
    def uses_install_playbook(self) -> bool:
        return self.gallery_image_id is None

    @property
    def resolved_agent_config_path(self) -> str:
        if self.agent_config_path:
            return self.agent_config_path
        return "/etc/pool-agent/agent.yaml" if self.os == "linux" else r"C:\ProgramData\pool-agent\agent.yaml"


class SiteAccess(_Strict):
    """The site's own identity, for auth: managed_identity (role assignments instead of keys)."""

    principal_id: str | None = None  # object id of the site's managed identity / service principal
    principal_type: Literal["ServicePrincipal", "User", "Group"] = "ServicePrincipal"

    @field_validator("principal_id")
    @classmethod
    def _guid(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", v):
            raise ValueError(f"principal_id {v!r} must be an object id (a GUID)")
        return v


# --- The whole stack --------------------------------------------------------------------------------

class StackConfig(_Strict):
    competition: str
    location: str | None = None  # default: azure-native:location
    resource_group: str | None = None  # an existing resource group; default: create rg-<competition>
    auth: Literal["connection_string", "managed_identity"] = "connection_string"
    naming_salt: str = ""  # change it when a derived global name (storage, namespace) is taken
    tags: dict[str, str] = Field(default_factory=dict)
    servicebus: ServiceBusConfig = Field(default_factory=ServiceBusConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    workers: WorkersConfig
    site: SiteAccess = Field(default_factory=SiteAccess)

    @field_validator("competition")
    @classmethod
    def _competition(cls, v: str) -> str:
        try:
            return check_competition_name(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("resource_group")
    @classmethod
    def _rg(cls, v: str | None) -> str | None:
        if v is not None and not RESOURCE_GROUP_RE.match(v):
            raise ValueError(f"resource group name {v!r}: 1-90 letters, digits, '-', '_', '.', '(' or ')', "
                             "not ending in '.'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        if self.servicebus.disable_local_auth and self.auth != "managed_identity":
            raise ValueError("servicebus.disable_local_auth needs auth: managed_identity (workers would "
                             "have no way in)")
        if self.servicebus.disable_local_auth and not self.site.principal_id:
            raise ValueError("servicebus.disable_local_auth needs site.principal_id (the site would have no "
                             "way in)")
        if self.site.principal_id and self.auth != "managed_identity":
            raise ValueError("site.principal_id is used with auth: managed_identity only")
        # The agent's own loader must accept the extra settings (checked here, before any deployment).
        probe = {**self.workers.agent, "pool": self.competition,
                 "servicebus": {"auth": "managed_identity", "task_queue": "t", "response_queue": "r",
                                "fully_qualified_namespace": "probe.servicebus.windows.net"}}
        try:
            agent = parse_agent_config(probe, "workers.agent")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        # On SIGTERM the agent finishes its task within shutdown_grace_s, then hands it back: all of
        # it must fit in the notice Azure gives before deleting the VM (with a minute to spare).
        if agent.shutdown_grace_s > self.workers.termination_notice.total_seconds() - 60:
            raise ValueError(f"workers.agent.shutdown_grace_s ({agent.shutdown_grace_s:g} s) must be at least "
                             "60 s shorter than workers.termination_notice "
                             f"({iso_duration(self.workers.termination_notice)})")
        return self


SECTIONS = tuple(StackConfig.model_fields)


def parse_stack_config(data: Mapping[str, Any], source: str = "stack config") -> StackConfig:
    """Validate a mapping of ``pool:*`` keys (prefix optional) -> :class:`StackConfig`.

    Errors name the key as an organizer wrote it (``pool:workers.max_instances``) and say why.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of pool:* keys")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.split(":", 1)[1] if key.startswith(f"{CONFIG_NAMESPACE}:") else key
        if ":" in name:
            continue  # another provider's setting (azure-native:location is read separately)
        values[name] = value
    try:
        return StackConfig.model_validate(values)
    except ValidationError as exc:
        lines, fields = [], []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {CONFIG_NAMESPACE}:{where}: {msg}" if where else f"  {msg}")
            fields.append(where)
        error = ConfigError(f"{source} is not valid:\n" + "\n".join(lines))
        error.fields = fields  # type: ignore[attr-defined]  # the keys at fault (an API names the first)
        raise error from None

