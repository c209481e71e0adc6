"""Agent config: every key read once, errors name the file and key, secrets stay out of sight."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polyfleet.agent.config import load_config
from polyfleet.agent.uplink import Credential
from polyfleet.shared.errors import ConfigError

GOOD = """
[agent]
data_dir = "state"
poll_interval_s = 30
concurrency = 8

[controller]
url = "http://127.0.0.1:8080/"
enrollment_code_env = "PF_TEST_CODE"

[defaults]
password_env = "PF_TEST_PW"
ssh_port = 0

[[devices]]
host = "127.0.0.5"
rest_port = 8443
tls_fingerprint = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"

[[devices]]
host = "127.0.0.6"
ssh_port = 2222
password_file = "pw"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_good_config_is_read_with_defaults(tmp_path: Path) -> None:
    """Relative paths resolve next to the file; defaults apply; URL trailing slash is dropped."""
    config = load_config(write(tmp_path, GOOD))
    assert config.data_dir == tmp_path / "state"
    assert config.controller_url == "http://127.0.0.1:8080"
    assert (config.poll_interval_s, config.concurrency) == (30.0, 8)
    first, second = config.devices
    assert (first.rest_port, first.ssh_port, first.password.env) == (8443, None, "PF_TEST_PW")
    assert (second.rest_port, second.ssh_port) == (443, 2222)
    assert second.password.file == tmp_path / "pw"
    assert config.credential_path == tmp_path / "state" / "credential.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("concurrency = 8", "concurrency = 0"), "agent.concurrency must be between 1"),
        (
            ("poll_interval_s = 30", 'poll_interval_s = "often"'),
            "agent.poll_interval_s must be a number",
        ),
        (("rest_port = 8443", "rest_port = 70000"), "devices[0].rest_port must be between"),
        (("ssh_port = 2222", "ssh_prot = 2222"), "devices[1].ssh_prot: unknown key"),
        (('host = "127.0.0.6"', 'hots = "127.0.0.6"'), "devices[1].host: missing"),
        (('data_dir = "state"', ""), "agent.data_dir: missing"),
        (("SHA256:47DEQ", "SHA256:!!"), "devices[0].tls_fingerprint"),
        (('url = "http://', 'url = "ftp://'), "controller.url must start with http"),
        (('host = "127.0.0.6"', 'host = "127.0.0.5"\nrest_port = 8443'), "listed twice"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    """A wrong value is refused with the file name and the dotted key."""
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path))
    assert message in str(caught.value)


def test_not_toml(tmp_path: Path) -> None:
    """A file that is not TOML says so, naming the file."""
    path = write(tmp_path, "[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_secrets_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passwords come from env or owner-only files and never show in the config's repr."""
    config = load_config(write(tmp_path, GOOD))
    monkeypatch.setenv("PF_TEST_PW", "s3cret-env")
    assert config.devices[0].password.read() == "s3cret-env"
    (tmp_path / "pw").write_text("s3cret-file\n")
    os.chmod(tmp_path / "pw", 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.devices[1].password.read()
    os.chmod(tmp_path / "pw", 0o600)
    assert config.devices[1].password.read() == "s3cret-file"
    assert "s3cret" not in repr(config)
    monkeypatch.delenv("PF_TEST_PW")
    with pytest.raises(ConfigError, match="PF_TEST_PW is not set"):
        config.devices[0].password.read()


def test_credential_file_is_owner_only(tmp_path: Path) -> None:
    """The enrollment credential is written 0600 and its token is not in its repr."""
    path = tmp_path / "cred.json"
    cred = Credential(
        controller_url="http://127.0.0.1:1",
        agent_id="a",
        site_id="s",
        token="tok-123",
        poll_interval_s=60,
    )
    cred.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Credential.load(path) == cred
    assert "tok-123" not in repr(cred)


def test_example_config_documents_the_defaults() -> None:
    """deploy/agent.example.toml loads, and every value it shows is the built-in default."""
    from dataclasses import fields

    from polyfleet.agent.config import AgentConfig

    example = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
    config = load_config(example)
    bare = AgentConfig(data_dir=config.data_dir)
    skip = {"devices", "source", "controller_url", "controller_urls", "agent_name", "data_dir"}
    for f in fields(AgentConfig):
        if f.name not in skip:
            assert getattr(config, f.name) == getattr(bare, f.name), f.name
    assert config.ssh_cross_check_every == 10 and config.held_retry_s == 300


@pytest.mark.skipif(os.geteuid() != 0, reason="only root enrolls on behalf of the service user")
def test_credential_saved_by_root_belongs_to_the_state_folder_owner(tmp_path: Path) -> None:
    """Enrolled by root into the service's state folder, the credential is the service user's."""
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 4242, 4243)
    path = folder / "credential.json"
    Credential(
        controller_url="http://127.0.0.1:1",
        agent_id="a",
        site_id="s",
        token="tok-123",
        poll_interval_s=60,
    ).save(path)
    info = path.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (4242, 4243, 0o600)


def test_unknown_driver_is_refused_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`agent run` with a driver the registry lacks exits 2 naming the file, key and known ones."""
    from polyfleet.cli import main

    path = write(tmp_path, GOOD.replace('host = "127.0.0.6"', 'host = "127.0.0.6"\ndriver = "x9"'))
    assert main(["agent", "run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: devices[1].driver: unknown driver 'x9' (known: videoos)" in err
    assert not (tmp_path / "state").exists(), "nothing started for a config that is wrong"
