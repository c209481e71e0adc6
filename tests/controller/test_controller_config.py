"""Controller configuration: TOML in, errors naming the file and key, flags override."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyfleet.controller.config import ConfigError, ControllerConfig, load_config


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "controller.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file() -> None:
    """No config: loopback 8080, ./polyfleet-data, 60 s polls."""
    config = load_config(None)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8080)
    assert config.data_dir == Path("polyfleet-data")
    assert config.silence_s == 180


def test_values_and_feature_sections(tmp_path: Path) -> None:
    """Keys are typed; feature sections stay raw; paths are relative to the file."""
    path = _write(
        tmp_path,
        '[server]\nlisten = "127.0.0.1:9000"\n[store]\ndata_dir = "data"\n'
        '[agents]\npoll_interval_s = 30\n[tickets]\nlanguage = "pl"\n[smtp]\nhost = "127.0.0.1"\n'
        'from = "fleet@firma.pl"\n',
    )
    config = load_config(path)
    assert config.listen_port == 9000
    assert config.data_dir == tmp_path / "data"
    assert config.poll_interval_s == 30
    assert dict(config.section("tickets")) == {"language": "pl"}
    assert dict(config.section("webhook")) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nlisten = 8080\n", "server.listen must be a string"),
        ('[server]\nlisten = "nowhere"\n', "server.listen: expected HOST:PORT"),
        ("[agents]\npoll_interval_s = 0\n", "agents.poll_interval_s must be positive"),
        ('[agents]\npoll_interval_s = "60"\n', "agents.poll_interval_s must be a whole number"),
        ("[store]\nsnapshots = 1\n", "store.snapshots: unknown key; known keys: data_dir, url"),
        ("[dashboard]\nport = 1\n", "unknown section [dashboard]"),
        (
            '[server]\ntls_cert = "c.pem"\n',
            "server.tls_cert must be set together with server.tls_key",
        ),
        ("[server\n", "not valid TOML"),
        ('[store]\nurl = "mysql://db/fleet"\n', "store.url: a store URL starts with postgresql://"),
        ("[store]\nurl = 5432\n", "store.url must be a string"),
        ('[server]\nadvertise_url = "ctl-a:8080"\n', "server.advertise_url: expected an http"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    """Each mistake is refused with the file name and the key at fault."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_flags_override(tmp_path: Path) -> None:
    """--data-dir and --listen win over the file."""
    config = ControllerConfig().with_overrides(data_dir=tmp_path, listen="[::1]:0")
    assert (config.data_dir, config.listen_host, config.listen_port) == (tmp_path, "::1", 0)


def test_store_url_selects_postgresql_and_flag_overrides(tmp_path: Path) -> None:
    """[store] url selects PostgreSQL, --store-url overrides it; else the embedded store."""
    path = _write(
        tmp_path,
        '[server]\nadvertise_url = "https://ctl-a.example.com:8443/"\n'
        '[store]\nurl = "postgresql://polyfleet@db-1.example.com/polyfleet"\n',
    )
    config = load_config(path)
    assert config.store_url == "postgresql://polyfleet@db-1.example.com/polyfleet"
    assert config.advertise_url == "https://ctl-a.example.com:8443"
    flagged = config.with_overrides(store_url="postgres://db-2.example.com/polyfleet")
    assert flagged.store_url == "postgres://db-2.example.com/polyfleet"
    assert load_config(None).store_url is None
    with pytest.raises(ConfigError, match="--store-url: a store URL starts with postgresql://"):
        config.with_overrides(store_url="/var/lib/polyfleet")


def test_example_config_in_deploy_is_valid() -> None:
    """deploy/controller.example.toml loads and matches the documented defaults."""
    example = Path(__file__).resolve().parents[2] / "deploy" / "controller.example.toml"
    config = load_config(example)
    defaults = ControllerConfig()
    assert config.data_dir == Path("/var/lib/polyfleet-controller")
    assert (config.listen_host, config.listen_port) == (defaults.listen_host, defaults.listen_port)
    assert config.poll_interval_s == defaults.poll_interval_s
    assert config.snapshot_interval_s == defaults.snapshot_interval_s
    assert config.max_artifact_bytes == defaults.max_artifact_bytes
