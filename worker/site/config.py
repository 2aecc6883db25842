"""``site.yaml``: what ``pool site serve`` needs, validated by pydantic with field-named errors.

```yaml
database_url: postgresql+psycopg://site@db/site     # default: SQLite file site.db next to this file
storage:
  connection_string: DefaultEndpointsProtocol=...     # or
  # account_url: https://ACCOUNT.blob.core.windows.net  (DefaultAzureCredential: user-delegation SAS)
servicebus:                                           # optional namespace-wide access for every pool
  namespace: NS.servicebus.windows.net                # DefaultAzureCredential, or connection_string
pools:
  comp-a:                                             # the site's own queue-level access (least rights)
    task_queue_connection_string: Endpoint=...        # Send + Listen (dead letters) on comp-a-tasks
    response_queue_connection_string: Endpoint=...    # Listen on comp-a-responses
  comp-b:
    namespace: NS.servicebus.windows.net              # identity with queue-scoped roles
tokens:
  - {name: ops, token_env: POOL_ADMIN_TOKEN, scope: admin}
  - {name: dashboard-viewers, token: "...", scope: read}
bind: {host: 127.0.0.1, port: 8080}
```
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.config import ConfigError, _format_errors, check_competition_name, load_yaml

MIN_TOKEN_CHARS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Scope(StrEnum):
    READ = "read"  # every GET
    ADMIN = "admin"  # everything: submit, cancel, rerun, dead letters, pools


class TokenConfig(_Strict):
    name: str = Field(min_length=1, max_length=64)
    token: str | None = Field(default=None, repr=False)
    token_env: str | None = None  # read from this environment variable at start
    scope: Scope = Scope.READ

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give exactly one of token or token_env")
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if not value:
                raise ValueError(f"environment variable {self.token_env} is not set")
            self.token = value
        if len(self.token or "") < MIN_TOKEN_CHARS:
            raise ValueError(f"a token needs at least {MIN_TOKEN_CHARS} characters")
        return self


class StorageConfig(_Strict):
    connection_string: str | None = Field(default=None, repr=False)
    account_url: str | None = None  # with DefaultAzureCredential (untested here: no Azure AD locally)

    @model_validator(mode="after")
    def _one(self) -> StorageConfig:
        if (self.connection_string is None) == (self.account_url is None):
            raise ValueError("give exactly one of connection_string or account_url")
        return self


class ServiceBusAccess(_Strict):
    """Namespace-wide: a connection string (Send + Listen, no Manage) or a namespace reached with
    DefaultAzureCredential."""

    connection_string: str | None = Field(default=None, repr=False)
    namespace: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ServiceBusAccess:
        if self.connection_string is not None and self.namespace is not None:
            raise ValueError("give connection_string or namespace, not both")
        return self

    @property
    def access(self) -> str | None:
        """What worker.site.queues.SiteQueues takes: a connection string or a namespace host name."""
        return self.connection_string or self.namespace


class PoolAccess(_Strict):
    task_queue_connection_string: str | None = Field(default=None, repr=False)
    response_queue_connection_string: str | None = Field(default=None, repr=False)
    namespace: str | None = None  # identity with queue-scoped roles (the Pulumi program grants them)

    @model_validator(mode="after")
    def _consistent(self) -> PoolAccess:
        pair = (self.task_queue_connection_string, self.response_queue_connection_string)
        if (pair[0] is None) != (pair[1] is None):
            raise ValueError("give both task_queue_connection_string and response_queue_connection_string")
        if self.namespace is not None and pair[0] is not None:
            raise ValueError("give the connection strings or namespace, not both")
        return self


class BindConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class SiteConfig(_Strict):
    database_url: str = "sqlite:///site.db"
    storage: StorageConfig
    servicebus: ServiceBusAccess = Field(default_factory=ServiceBusAccess)
    pools: dict[str, PoolAccess] = Field(default_factory=dict)
    tokens: list[TokenConfig] = Field(min_length=1)
    bind: BindConfig = Field(default_factory=BindConfig)
    # The emulator's /metrics, read for queue depths (active / scheduled / dead-lettered). On Azure,
    # `queue_depth: management` reads them with ServiceBusAdministrationClient (needs Manage: off by default).
    queue_metrics_url: str | None = None
    queue_depth_from_management: bool = False
    public_metrics: bool = False  # /metrics without a token (for a scraper inside a private network)
    lost_after_s: float = Field(default=180.0, gt=0)
    resend_after_s: float = Field(default=5.0, gt=0)
    monitor_interval_s: float = Field(default=1.0, gt=0)
    database_wait_s: float = Field(default=60.0, ge=0)  # a database still starting (or recovering) at start
    monitor_lease_s: float = Field(default=10.0, gt=0)  # replicas: a dead leader's monitor work moves after this
    sas_margin_s: float = Field(default=6 * 3600.0, gt=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # JSON bodies
    max_bundle_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)  # bundle uploads

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, PoolAccess]) -> dict[str, PoolAccess]:
        for name in pools:
            try:
                check_competition_name(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return pools

    @field_validator("database_url")
    @classmethod
    def _database(cls, url: str) -> str:
        if not url.startswith(("sqlite", "postgresql")):
            raise ValueError("use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return url

    @model_validator(mode="after")
    def _unique_tokens(self) -> SiteConfig:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError("token names must be unique")
        return self


def parse_site_config(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> SiteConfig:
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source} is not a valid site config:\n{_format_errors(exc)}") from None
    if base_dir is not None and config.database_url.startswith("sqlite:///") and \
            not config.database_url.startswith("sqlite:////"):  # relative to the config file
        path = config.database_url.removeprefix("sqlite:///")
        if path != ":memory:":
            config.database_url = f"sqlite:///{(base_dir / path).resolve()}"
    return config


def load_site_config(path: str | Path) -> SiteConfig:
    path = Path(path)
    return parse_site_config(load_yaml(path, "site config"), str(path), base_dir=path.resolve().parent)
