"""site.yaml: pydantic-validated, errors name the field; `pool site serve` refuses a bad one (exit 2)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from worker.cli import app
from worker.config import ConfigError
from worker.site.auth import TokenTable, bearer
from worker.site.config import Scope, load_site_config, parse_site_config

GOOD = {"storage": {"connection_string": "UseDevelopmentStorage=true"},
        "tokens": [{"name": "ops", "token": "t" * 32, "scope": "admin"}]}


def test_defaults_sqlite_next_to_the_file_and_loopback(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    config = load_site_config(path)
    assert config.database_url == f"sqlite:///{tmp_path / 'site.db'}"
    assert config.bind.host == "127.0.0.1" and config.tokens[0].scope is Scope.ADMIN


@pytest.mark.parametrize(("change", "field"), [
    ({"storage": {}}, "storage"),
    ({"storage": {"connection_string": "x", "account_url": "https://a"}}, "storage"),
    ({"tokens": []}, "tokens"),
    ({"tokens": [{"name": "a", "token": "short"}]}, "tokens.0"),
    ({"tokens": [{"name": "a", "token": "t" * 20, "scope": "root"}]}, "tokens.0.scope"),
    ({"tokens": [{"name": "a", "token_env": "NO_SUCH_VARIABLE_9"}]}, "tokens.0"),
    ({"database_url": "mysql://x"}, "database_url"),
    ({"bind": {"port": 70000}}, "bind.port"),
    ({"pools": {"Bad_Name": {}}}, "pools"),
    ({"pools": {"comp-a": {"task_queue_connection_string": "Endpoint=sb://x/"}}}, "pools.comp-a"),
    ({"servicebus": {"connection_string": "Endpoint=sb://x/", "namespace": "x.servicebus.windows.net"}},
     "servicebus"),
    ({"surprise": 1}, "surprise"),
])
def test_errors_name_the_field(change, field):
    with pytest.raises(ConfigError) as err:
        parse_site_config({**GOOD, **change}, "site.yaml")
    assert f"  {field}" in str(err.value), str(err.value)


def test_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("SITE_TOKEN_9", "e" * 40)
    config = parse_site_config({**GOOD, "tokens": [{"name": "ops", "token_env": "SITE_TOKEN_9"}]})
    assert config.tokens[0].token == "e" * 40 and config.tokens[0].scope is Scope.READ
    assert "e" * 40 not in repr(config)  # never printed


def test_token_table_and_bearer_header():
    table = TokenTable(parse_site_config({**GOOD, "tokens": [
        {"name": "ops", "token": "a" * 20, "scope": "admin"}, {"name": "view", "token": "b" * 20}]}).tokens)
    assert table.check("a" * 20).admin and not table.check("b" * 20).admin
    for wrong in (None, "", "a" * 19, "a" * 21, "c" * 20):
        assert table.check(wrong) is None
    assert bearer("Bearer xyz") == "xyz" and bearer("bearer  xyz ") == "xyz"
    assert bearer("Basic xyz") is None and bearer("Bearer ") is None and bearer(None) is None


def test_serve_refuses_a_bad_config_naming_the_field(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "bind": {"port": "eighty"}}))
    result = CliRunner().invoke(app, ["site", "serve", "--config", str(path)])
    assert result.exit_code == 2 and "bind.port" in result.output
