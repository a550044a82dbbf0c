"""Configuration: the TOML file, environment overrides, secrets from files, clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import TypeAdapter

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


def _credentials(folder: Path) -> Path:
    """The files the example names, in a $CREDENTIALS_DIRECTORY of their own."""
    creds = folder / "creds"
    creds.mkdir()
    for name, content in {
        "isales_ak": "AK-example",
        "isales_sk": "SK-example-secret",
        "sftp_key": "key",
        "known_hosts": "",
    }.items():
        (creds / name).write_text(content)
    return creds


def _uncommented(text: str) -> str:
    """The example with every "# key = value" and "# [table]" line made live."""
    return re.sub(r"(?m)^# ((?:[a-z_]+ = .*)|(?:\[{1,2}[a-z_]+\]{1,2}))$", r"\1", text)


def test_the_example_configuration_loads_and_covers_every_key(tmp_path, monkeypatch):
    from watcher.config_commands import example_text
    from watcher.settings import Settings

    creds = _credentials(tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    # The example's known_hosts is in /etc, as the systemd unit has it: pointed here instead.
    monkeypatch.setenv("ISALES_WATCHER_SFTP__KNOWN_HOSTS_FILE", str(creds / "known_hosts"))
    text = example_text()
    assert all(len(line) <= 100 for line in text.splitlines())
    config = tmp_path / "config.toml"
    config.write_text(text)
    settings = load_settings(config)  # the real loader, as the daemon reads it
    assert settings.isales.secret_key.get_secret_value() == "SK-example-secret"
    assert settings.routes[0].campaign_id
    # Every commented line is valid TOML once uncommented, and the keys are exactly the model's.
    written = tomllib.loads(_uncommented(text))
    sections = {"isales", "sftp", "routes", "daemon", "validation", "local"}
    assert set(written) == set(Settings.model_fields) == sections
    for name, field in Settings.model_fields.items():
        table = written[name][0] if name == "routes" else written[name]
        model = field.annotation.__args__[0] if name in ("routes", "local") else field.annotation
        assert set(table) == set(model.model_fields), name
        for key, value in table.items():
            inner = model.model_fields[key]
            assert inner.description, f"{name}.{key} has no description"
            # Each value shown is one the key accepts (type and bounds).
            TypeAdapter(Annotated[inner.annotation, inner]).validate_python(value)


def test_config_example_and_show_from_the_command_line(files, monkeypatch):
    monkeypatch.setenv("ISALES_WATCHER_DAEMON__POLL_INTERVAL_S", "2.5")
    monkeypatch.setenv("ISALES_WATCHER_DEAMON__SETTLE_S", "3")
    config = write(files)
    shown = _run("config", "show", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    lines = {line.split(" = ")[0]: line for line in shown.stdout.splitlines() if " = " in line}
    assert re.fullmatch(rf"vdn_id = 12 +# {re.escape(str(config))}:3", lines["vdn_id"])
    assert re.fullmatch(
        r"poll_interval_s = 2.5 +# \$ISALES_WATCHER_DAEMON__POLL_INTERVAL_S",
        lines["poll_interval_s"],
    )
    assert re.fullmatch(r'secret_key = "\*+" +# read from secret_key_file', lines["secret_key"])
    assert re.fullmatch(r'access_key = "\*+" +# .*:4', lines["access_key"])
    assert re.fullmatch(r"settle_s = 10.0 +# default", lines["settle_s"])
    assert "s3cret" not in shown.stdout
    assert shown.stderr == (
        "isales-watcher: warning: ISALES_WATCHER_DEAMON__SETTLE_S names no setting and is "
        "ignored; did you mean ISALES_WATCHER_DAEMON__SETTLE_S?\n"
    )
    example = _run("config", "example")
    assert example.returncode == 0
    assert "[[routes]]" in example.stdout


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=60
    )


def _problems(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    return str(caught.value).splitlines()


def test_a_misspelt_section_is_named_with_its_line_and_the_nearest_one(files):
    config = write(files, extra="[deamon]\nsettle_s = 3\n")
    line = config.read_text().splitlines().index("[deamon]") + 1
    assert _problems(config) == [
        f"{config}:{line}: [deamon] is not a section of the configuration; did you mean [daemon]?"
    ]
    config = write(files, isales="vdn_idd = 3")
    [problem] = _problems(config)  # not also "vdn_id is required"
    assert problem.endswith("isales.vdn_idd is not a setting; did you mean vdn_id?")


def test_routes_as_one_table_and_a_route_without_campaign_say_so_plainly(files):
    table = '[routes]\nname = "spring"\ninbox = "/home/sftp/inbox/spring"\ncampaign_id = "1"\n'
    config = write(files, routes=table)
    line = config.read_text().splitlines().index("[routes]") + 1
    assert _problems(config) == [
        f"{config}:{line}: [routes] is one table; write [[routes]] (an array of tables), one "
        "per inbox"
    ]
    config = write(files, routes='[[routes]]\nname = "spring"\ninbox = "/home/sftp/in/spring"\n')
    line = config.read_text().splitlines().index("[[routes]]") + 1
    assert _problems(config) == [
        f"{config}:{line}: route 1 (spring): campaign_id: required (or end the inbox in "
        "/{campaign_id})"
    ]
    assert "no route: add a [[routes]] table" in _problems(write(files, routes=""))[0]


def test_an_environment_error_names_the_variable_not_the_file(files, monkeypatch):
    monkeypatch.setenv("ISALES_WATCHER_DAEMON__POLL_INTERVAL_S", "fast")
    assert _problems(write(files)) == [
        "$ISALES_WATCHER_DAEMON__POLL_INTERVAL_S: daemon.poll_interval_s: Input should be a "
        "valid number, unable to parse string as a number (got 'fast')"
    ]
    monkeypatch.delenv("ISALES_WATCHER_DAEMON__POLL_INTERVAL_S")
    monkeypatch.setenv("ISALES_WATCHER_ISALES__SIGNED_HEADERS", "host")
    [problem] = _problems(write(files))
    assert problem.startswith("$ISALES_WATCHER_ISALES__SIGNED_HEADERS: not valid JSON")
    monkeypatch.setenv("ISALES_WATCHER_ISALES__SIGNED_HEADERS", '["host", "content-type"]')
    monkeypatch.setenv("ISALES_WATCHER_ISALES__SECRET_KEY", "from-env")
    settings = load_settings(write(files))
    assert settings.isales.signed_headers == ("content-type", "host")
    assert settings.isales.secret_key.get_secret_value() == "from-env"


def test_a_section_given_in_json_is_merged_over_the_file_and_each_key_keeps_its_source(
    files, monkeypatch
):
    from watcher.config_commands import show_text
    from watcher.settings import read_settings

    monkeypatch.setenv("ISALES_WATCHER_ISALES", '{"vdn_id": 5, "locale": "en_US"}')
    monkeypatch.setenv("ISALES_WATCHER_ISALES__VDN_ID", "6")  # a key's own variable wins
    config = write(files)
    settings, layers = read_settings(config)
    assert (settings.isales.vdn_id, settings.isales.locale) == (6, "en_US")
    assert settings.isales.access_key.get_secret_value() == "AK"  # the file's keys stay
    lines = {line.split(" = ")[0]: line for line in show_text(settings, layers).splitlines()}
    assert lines["vdn_id"].endswith("# $ISALES_WATCHER_ISALES__VDN_ID")
    assert lines["locale"].endswith("# $ISALES_WATCHER_ISALES")
    assert lines["access_key"].endswith(f"# {config}:4")
    assert lines["base_url"].endswith(f"# {config}:2")


def test_a_variable_whose_text_is_not_the_json_a_setting_needs_is_named(files, monkeypatch):
    monkeypatch.setenv("ISALES_WATCHER_LOCAL", "{base_dir")
    assert _problems(write(files)) == [
        "$ISALES_WATCHER_LOCAL: local takes an object, in JSON (got '{base_dir')"
    ]
    monkeypatch.delenv("ISALES_WATCHER_LOCAL")
    monkeypatch.setenv("ISALES_WATCHER_ROUTES", '[{"name": "spring",')
    assert _problems(write(files)) == [
        "$ISALES_WATCHER_ROUTES: not valid JSON (Expecting property name enclosed in double "
        "quotes); routes takes an array, in JSON"
    ]


def test_an_unknown_variable_is_warned_about_with_the_nearest_name(files, monkeypatch):
    monkeypatch.setenv("ISALES_WATCHER_DEAMON__SETTLE_S", "3")
    monkeypatch.setenv("ISALES_WATCHER_ROUTES__0__NAME", "x")
    monkeypatch.setenv("ISALES_WATCHER_NOTHING_LIKE_IT", "x")
    warnings: list[str] = []
    settings = load_settings(write(files), warn=warnings.append)
    assert settings.daemon.settle_s == 10.0
    assert warnings == [
        "ISALES_WATCHER_DEAMON__SETTLE_S names no setting and is ignored; did you mean "
        "ISALES_WATCHER_DAEMON__SETTLE_S?",
        "ISALES_WATCHER_NOTHING_LIKE_IT names no setting and is ignored (see: isales-watcher "
        "config example)",
        "ISALES_WATCHER_ROUTES__0__NAME names no setting and is ignored; give "
        "ISALES_WATCHER_ROUTES the whole list instead, as a JSON array of tables",
    ]


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
        assert "route 1 (spring)" in str(caught.value)


@pytest.mark.parametrize(
    "url", ["https://ops:hunter2@10.0.0.5:28443", "ftp://ops:hunter2@10.0.0.5", "https://ops@h:1"]
)
def test_a_base_url_with_a_user_or_password_is_refused_without_repeating_it(files, url):
    config = write(files)
    config.write_text(config.read_text().replace("https://10.0.0.5:28443", url))
    with pytest.raises(ConfigError, match=r"isales\.base_url: takes no user") as caught:
        load_settings(config)
    assert "hunter2" not in str(caught.value)
    assert "ops" not in str(caught.value)
