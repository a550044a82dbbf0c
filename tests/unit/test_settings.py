"""Configuration: the TOML file, environment overrides, secrets from files, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.errors import ConfigError
from watcher.settings import load_settings


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "sk").write_text("s3cret-value\n")
    (tmp_path / "id").write_text("key")
    (tmp_path / "known_hosts").write_text("")
    return {
        "dir": tmp_path,
        "sk": tmp_path / "sk",
        "id": tmp_path / "id",
        "kh": tmp_path / "known_hosts",
    }


def write(
    files: dict[str, Path],
    *,
    isales: str = "",
    sftp: str = "",
    routes: str | None = None,
    extra: str = "",
) -> Path:
    route = (
        routes
        if routes is not None
        else (
            '[[routes]]\nname = "spring"\ninbox = "/home/sftp/inbox/spring"\ncampaign_id = "1647"\n'
        )
    )
    config = files["dir"] / "config.toml"
    config.write_text(f"""\
[isales]
base_url = "https://10.0.0.5:28443"
vdn_id = 12
access_key = "AK"
secret_key_file = "{files["sk"]}"
{isales}

[sftp]
host = "10.0.0.7"
username = "isales"
private_key_file = "{files["id"]}"
known_hosts_file = "{files["kh"]}"
base_path = "/home/sftp"
{sftp}

{route}
{extra}
""")
    return config


def test_a_good_file_loads_with_the_secret_read_from_its_file(files):
    settings = load_settings(write(files))
    assert settings.isales.secret_key.get_secret_value() == "s3cret-value"
    assert "s3cret" not in repr(settings)
    assert settings.isales.sent_host == "10.0.0.5:28443"
    assert (
        settings.relative_to_base("/home/sftp/inbox/spring/processing/x")
        == "/inbox/spring/processing/x"
    )
    assert settings.routes[0].hour_minute is None


def test_the_environment_overrides_the_file(files, monkeypatch):
    monkeypatch.setenv("ISALES_WATCHER_DAEMON__POLL_INTERVAL_S", "2.5")
    monkeypatch.setenv("ISALES_WATCHER_ISALES__VDN_ID", "99")
    settings = load_settings(write(files))
    assert settings.daemon.poll_interval_s == 2.5
    assert settings.isales.vdn_id == 99
    assert settings.isales.access_key.get_secret_value() == "AK"  # the rest of the section stays


def test_a_relative_secret_file_comes_from_systemd_credentials(files, monkeypatch):
    creds = files["dir"] / "creds"
    creds.mkdir()
    (creds / "isales_sk").write_text("from-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = write(files)
    config.write_text(config.read_text().replace(str(files["sk"]), "isales_sk"))
    assert load_settings(config).isales.secret_key.get_secret_value() == "from-credentials"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"isales": "vdn_idd = 3"}, "isales.vdn_idd"),
        ({"isales": 'ca_file = "/nope.pem"'}, "ca_file"),
        (
            {"routes": '[[routes]]\nname = "x"\ninbox = "/elsewhere/x"\ncampaign_id = "1"\n'},
            "outside sftp.base_path",
        ),
        (
            {
                "routes": '[[routes]]\nname = "x"\ninbox = "/home/sftp/x"\ncampaign_id = "1"\n'
                'schedule = "25:00"\n'
            },
            "schedule",
        ),
        ({"extra": "[daemon]\nsettle_s = -1\n"}, "daemon.settle_s"),
    ],
)
def test_a_bad_key_is_named(files, change, names):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(files, **change))
    assert names in str(caught.value)


def test_plain_http_and_missing_host_keys_are_refused(files):
    config = write(files)
    config.write_text(config.read_text().replace("https://", "http://"))
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        load_settings(config)
    config = write(files)
    config.write_text(config.read_text().replace(f'known_hosts_file = "{files["kh"]}"', ""))
    with pytest.raises(ConfigError, match="host_key_fingerprint"):
        load_settings(config)


def test_a_missing_secret_file_is_named_without_leaking_anything(files):
    files["sk"].unlink()
    with pytest.raises(ConfigError, match="secret_key_file: cannot read"):
        load_settings(write(files))


def test_the_cli_exits_78_on_a_bad_config(files):
    config = write(files, isales="vdn_id_typo = 1")
    result = subprocess.run(
        [sys.executable, "-m", "watcher", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert "isales.vdn_id_typo" in result.stderr
    assert result.stderr.count("\n") == 1  # one message, no traceback


def test_signed_headers_are_lower_cased_and_must_be_sent(files):
    settings = load_settings(write(files, isales='signed_headers = ["Host", "Content-Type"]'))
    assert settings.isales.signed_headers == ("content-type", "host")
    with pytest.raises(ConfigError, match="signed_headers: x-date is not sent by the client"):
        load_settings(write(files, isales='signed_headers = ["host", "X-Date"]'))
    with pytest.raises(ConfigError, match="must include host"):
        load_settings(write(files, isales='signed_headers = ["content-type"]'))
    with pytest.raises(ConfigError, match="locale is not sent"):
        load_settings(write(files, isales='signed_headers = ["host", "locale"]'))
    both = load_settings(
        write(files, isales='signed_headers = ["host", "locale"]\nlocale = "en_US"')
    )
    assert both.isales.signed_headers == ("host", "locale")


def test_a_gateway_host_header_and_the_server_zone(files):
    settings = load_settings(
        write(files, isales='host_header = "isales.example:443"\nserver_utc_offset = "+08:00"')
    )
    assert settings.isales.sent_host == "isales.example:443"
    assert settings.isales.server_zone is not None
    assert settings.isales.server_zone.utcoffset(None).total_seconds() == 8 * 3600
    with pytest.raises(ConfigError, match="server_utc_offset: 'Asia/Shanghai' is not a UTC offset"):
        load_settings(write(files, isales='server_utc_offset = "Asia/Shanghai"'))
    with pytest.raises(ConfigError, match="host_header"):
        load_settings(write(files, isales='host_header = "a b\\r\\nX: y"'))


def test_every_file_key_given_by_name_comes_from_the_credentials_directory(files, monkeypatch):
    creds = files["dir"] / "creds"
    creds.mkdir()
    contents = {"isales_ak": "AK2", "isales_sk": "SK2", "sftp_key": "k", "kh": ""}
    for name, content in contents.items():
        (creds / name).write_text(content)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = write(files)
    text = config.read_text().replace('access_key = "AK"', 'access_key_file = "isales_ak"')
    text = text.replace(str(files["sk"]), "isales_sk").replace(str(files["id"]), "sftp_key")
    config.write_text(text.replace(str(files["kh"]), "kh"))
    settings = load_settings(config)
    assert settings.isales.access_key.get_secret_value() == "AK2"
    assert settings.isales.secret_key.get_secret_value() == "SK2"
    assert settings.sftp.private_key_file == creds / "sftp_key"
    assert settings.sftp.known_hosts_file == creds / "kh"


def test_a_credential_name_without_a_credentials_directory_is_named(files, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = write(files)
    config.write_text(config.read_text().replace(str(files["id"]), "sftp_key"))
    with pytest.raises(ConfigError, match=r"private_key_file: 'sftp_key' is a credential name"):
        load_settings(config)


def test_a_key_the_service_user_cannot_read_is_named(files, monkeypatch):
    import os

    # As a DynamicUser= service sees a root-only key in /etc (root, running the tests, reads all).
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: p != files["id"] and real_access(p, m))
    with pytest.raises(ConfigError, match=r"private_key_file: .* is not readable by uid"):
        load_settings(write(files))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/home/sftp/inbox/spring", "/home/sftp/inbox/{campaign_id}"),
        ("/home/sftp/inbox", "/home/sftp/inbox/{campaign_id}"),
        ("/home/sftp/a/{campaign_id}", "/home/sftp/a/{campaign_id}"),
        ("/home/sftp/in", "/home/sftp/in/done"),
        ("/home/sftp/in/processing/x", "/home/sftp/in"),
    ],
)
def test_two_routes_never_own_one_folder(tmp_path, first, second):
    text = _two_routes(tmp_path, first, second)
    with pytest.raises(ConfigError, match="would both own one folder"):
        load_settings(text)


def test_routes_side_by_side_are_fine(tmp_path):
    text = _two_routes(tmp_path, "/home/sftp/inbox/spring", "/home/sftp/campaigns/{campaign_id}")
    assert len(load_settings(text).routes) == 2


def _two_routes(tmp_path, first: str, second: str):
    (tmp_path / "sk").write_text("x")
    config = tmp_path / "c.toml"
    config.write_text(f"""
[isales]
base_url = "https://10.0.0.5:28443"
vdn_id = 1
access_key = "AK"
secret_key_file = "{tmp_path / "sk"}"
[sftp]
host = "10.0.0.7"
username = "isales"
base_path = "/home/sftp"
host_key_fingerprint = "SHA256:{"A" * 43}"
password = "x"
{_route("one", first, "1")}
{_route("two", second, "2")}
""")
    return config


def _route(name: str, inbox: str, campaign: str) -> str:
    campaign_line = "" if "{campaign_id}" in inbox else f'campaign_id = "{campaign}"'
    return f'[[routes]]\nname = "{name}"\ninbox = "{inbox}"\n{campaign_line}'



def test_a_route_chooses_its_receipts_language_and_what_happens_to_other_names(files):
    route = '[[routes]]\nname = "spring"\ninbox = "/home/sftp/inbox/spring"\ncampaign_id = "1647"\n'
    [default] = load_settings(write(files, routes=route)).routes
    assert (default.receipt_language, default.unmatched) == ("en", "reject")
    chosen = route + 'receipt_language = "zh-CN"\nunmatched = "ignore"\n'
    [spring] = load_settings(write(files, routes=chosen)).routes
    assert (spring.receipt_language, spring.unmatched) == ("zh_CN", "ignore")
    for bad, said in (
        ('receipt_language = "fr"', "'fr' is not a receipt language; use one of en, zh_CN"),
        ('unmatched = "delete"', "unmatched"),
    ):
        with pytest.raises(ConfigError, match=said) as caught:
            load_settings(write(files, routes=route + bad + "\n"))
        assert "routes" in str(caught.value)
