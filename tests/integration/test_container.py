"""The container sidecar, built and run here: the images from deploy/, the Kubernetes example
played by podman (the SFTP server and the watcher in one pod on one drop volume), the iSales
emulator on the host fetching over SFTP from the pod.

The pod uses slirp4netns (user-mode networking): it reaches the host's loopback as 10.0.2.2 and
publishes its ports without a host firewall rule. Everything made carries one prefix and is
removed at the end, failed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncssh
import pytest
import yaml

from tests.containers import (
    DEPLOY,
    KUBERNETES,
    Podman,
    base_image,
    build,
    build_wheels,
    kustomize,
    layers_contain,
    podman_session,
)
from tests.workbooks import rows_valid, xlsxwriter_bytes
from watcher import __version__
from watcher.isales.emulator import Emulator, RegisteredServer
from watcher.samples import write_invalid_sample

pytestmark = pytest.mark.timeout(1200)

SFTP_PORT, CONTROL_PORT = 2222, 9187  # as deploy/ publishes them
HOST_FROM_POD = "10.0.2.2"  # slirp4netns: the host's loopback, seen from the pod
INBOX = "/srv/sftp/inbox/spring-sale"  # the route of deploy/kubernetes/config.toml
CAMPAIGN = "1001"


@dataclass(frozen=True)
class Credentials:
    """This run's secrets: the layer scan looks for them, the pod runs with them."""

    access_key: str
    secret_key: str
    host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey

    @property
    def host_private(self) -> str:
        return self.host_key.export_private_key().decode()


@pytest.fixture(scope="module")
def credentials() -> Credentials:
    return Credentials(
        f"ak-{secrets.token_hex(8)}",
        f"sk-{secrets.token_hex(16)}",
        asyncssh.generate_private_key("ssh-ed25519"),
        asyncssh.generate_private_key("ssh-ed25519"),
    )


@dataclass
class Images:
    podman: Podman
    watcher: str
    sftp: str
    build_s: float
    folder: Path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, credentials) -> Iterator[Images]:
    folder = tmp_path_factory.mktemp("containers")
    with podman_session(folder) as podman:
        base = base_image(podman)
        started = time.monotonic()
        wheels = build_wheels(folder)
        # A careless build context: secrets and a config beside the wheels. None may get in.
        (wheels / "config.toml").write_text(
            f'access_key = "{credentials.access_key}"\nsecret_key = "{credentials.secret_key}"\n'
        )
        (wheels / "ssh_host_ed25519_key").write_text(credentials.host_private)
        watcher = build(podman, "isales-watcher", wheels, base, DEPLOY / "Dockerfile")
        sftp = build(podman, "isales-sftp-server", DEPLOY / "sftp-server", base)
        yield Images(podman, watcher, sftp, time.monotonic() - started, folder)


def test_the_watcher_image_runs_as_documented(images):
    inspected = json.loads(images.podman("image", "inspect", images.watcher).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/opt/isales-watcher/bin/isales-watcher"]
    assert config["StopSignal"] == "SIGTERM"
    assert inspected["Healthcheck"]["Test"][1:] == [
        "/opt/isales-watcher/bin/isales-watcher",
        "probe",
        "live",
    ]
    assert "/var/lib/isales-watcher" in config["Volumes"]
    version = images.podman(
        "run", "--rm", "--network", "none", "--read-only", images.watcher, "--version"
    )
    assert version.stdout.strip() == f"isales-watcher {__version__}"
    size_mb = inspected["Size"] / 1e6
    print(
        f"\nimage {images.watcher}: {size_mb:.0f} MB; wheels and both builds {images.build_s:.0f} s"
    )


def test_no_secret_or_config_is_in_any_layer(images, credentials, tmp_path):
    # The build contexts held this run's AK/SK and host key (see the fixture); the pod runs
    # with the same ones. podman image save: every layer and the image config.
    needles = [
        credentials.access_key.encode(),
        credentials.secret_key.encode(),
        credentials.host_private.split()[6].encode(),  # a line of the key body
    ]
    for image in (images.watcher, images.sftp):
        assert layers_contain(images.podman, image, needles, tmp_path) == [], image


# --- the sidecar pod -----------------------------------------------------------------------


@dataclass
class Pod:
    name: str
    client_key: asyncssh.SSHKey
    known_hosts: Path
    access_key: str
    secret_key: str

    def container(self, which: str) -> str:
        return f"{self.name}-pod-0-{which}"


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _config(emulator_port: int) -> str:
    """deploy/kubernetes/config.toml, pointed at this test's emulator and paced for a test."""
    text = (KUBERNETES / "config.toml").read_text()
    text = re.sub(
        r"^base_url = .*$",
        f'base_url = "http://{HOST_FROM_POD}:{emulator_port}"\nallow_insecure_http = true\n'
        "track_poll_s = 0.5",
        text,
        flags=re.M,
    )
    text = re.sub(r"^host = .*$", 'host = "127.0.0.1"', text, flags=re.M)
    text = re.sub(r"^port = 22$", f"port = {SFTP_PORT}", text, flags=re.M)
    return text.replace("[daemon]\n", "[daemon]\npoll_interval_s = 1\nsettle_s = 1\n")


async def _wait_for_ssh(port: int, timeout_s: float) -> None:
    """Until sshd's banner comes: the pod's port forwarder accepts before sshd listens."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if (await asyncio.wait_for(reader.readline(), 2)).startswith(b"SSH-2.0-"):
                    return
            finally:
                writer.close()
        if time.monotonic() > deadline:
            pytest.fail(f"no SSH banner on 127.0.0.1:{port} after {timeout_s} s")
        await asyncio.sleep(0.3)


@pytest.fixture
async def pod(images, credentials, tmp_path) -> AsyncIterator[tuple[Pod, Emulator]]:
    for port in (SFTP_PORT, CONTROL_PORT):
        if not _port_is_free(port):
            pytest.fail(f"port {port} is taken on this machine; the deploy example publishes it")
    podman = images.podman
    access_key, secret_key = credentials.access_key, credentials.secret_key
    host_private = credentials.host_private
    host_public = credentials.host_key.export_public_key().decode()
    client_key = credentials.client_key
    client_public = client_key.export_public_key().decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{SFTP_PORT} {host_public}")
    emulator = Emulator(
        access_key=access_key,
        secret_key=secret_key,
        vdn_id=1,
        campaigns={CAMPAIGN},
        import_delay_s=0.2,
        servers=[
            RegisteredServer(
                "fs-pod",
                "127.0.0.1",
                SFTP_PORT,
                "isales",
                "/srv/sftp",
                connect_options={"client_keys": [client_key], "known_hosts": str(known_hosts)},
            )
        ],
    )
    base_url = await emulator.start()
    emulator_port = int(base_url.rsplit(":", 1)[1])
    docs = kustomize(
        KUBERNETES,
        prefix=podman.prefix,
        files={
            "config.toml": _config(emulator_port),
            "secrets/authorized_keys": client_public,
            "secrets/isales_ak": access_key,
            "secrets/isales_sk": secret_key,
            "secrets/ssh_host_ed25519_key": host_private,
        },
        images={
            "localhost/isales-watcher": images.watcher,
            "localhost/isales-sftp-server": images.sftp,
        },
    )
    # emptyDir volumes become podman volumes named as in the pod spec: clean those too.
    for doc in docs:
        for volume in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "emptyDir" in volume:
                podman.volumes.append(volume["name"])
    played = tmp_path / "play.yaml"
    played.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    deployment = next(doc["metadata"]["name"] for doc in docs if doc["kind"] == "Deployment")
    try:
        podman(
            "kube",
            "play",
            "--network",
            "slirp4netns:allow_host_loopback=true",
            str(played),
        )
        await _wait_for_ssh(SFTP_PORT, 60)
        yield Pod(deployment, client_key, known_hosts, access_key, secret_key), emulator
    finally:
        await emulator.close()
        pod_name = f"{deployment}-pod-0"
        for which in ("sftp", "watcher"):
            logs = podman("logs", f"{pod_name}-{which}", check=False)
            (tmp_path / f"{which}.log").write_text(logs.stdout + logs.stderr)
        podman("pod", "rm", "--force", "--time", "0", pod_name, check=False)


def _firewall_rules() -> str:
    if shutil.which("nft") is None:
        return ""
    rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False)
    return rules.stdout.lower()


async def _upload(pod: Pod, name: str, data: bytes) -> None:
    async with (
        asyncssh.connect(
            "127.0.0.1",
            SFTP_PORT,
            username="isales",
            client_keys=[pod.client_key],
            known_hosts=str(pod.known_hosts),
        ) as connection,
        connection.start_sftp_client() as sftp,
    ):
        temporary = f"{INBOX}/.{name}.part"
        async with sftp.open(temporary, "wb") as handle:
            await handle.write(data)
        await sftp.rename(temporary, f"{INBOX}/{name}")


async def _listing(pod: Pod, folder: str) -> list[str]:
    async with (
        asyncssh.connect(
            "127.0.0.1",
            SFTP_PORT,
            username="isales",
            client_keys=[pod.client_key],
            known_hosts=str(pod.known_hosts),
        ) as connection,
        connection.start_sftp_client() as sftp,
    ):
        try:
            return sorted(await sftp.listdir(folder))
        except asyncssh.SFTPNoSuchFile:
            return []


async def _read(pod: Pod, path: str) -> str:
    async with (
        asyncssh.connect(
            "127.0.0.1",
            SFTP_PORT,
            username="isales",
            client_keys=[pod.client_key],
            known_hosts=str(pod.known_hosts),
        ) as connection,
        connection.start_sftp_client() as sftp,
        sftp.open(path, encoding="utf-8") as handle,
    ):
        text: str = await handle.read()
        return text


async def test_the_kubernetes_sidecar_imports_over_sftp_and_drains_on_stop(images, pod, tmp_path):
    pod, emulator = pod
    podman = images.podman
    started = time.monotonic()
    invalid = tmp_path / "invalid.xlsx"
    write_invalid_sample(invalid)
    valid = xlsxwriter_bytes(rows_valid(12, seed=9))
    await _upload(pod, "calls.xlsx", valid)
    await _upload(pod, "broken.xlsx", invalid.read_bytes())

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = await _listing(pod, f"{INBOX}/done")
        rejected = await _listing(pod, f"{INBOX}/rejected")
        if "calls.xlsx.result.txt" in done and "broken.xlsx.result.txt" in rejected:
            break
        await asyncio.sleep(0.5)
    else:
        logs = podman("logs", pod.container("watcher"), check=False)
        pytest.fail(f"not settled in 90 s: done={done} rejected={rejected}\n{logs.stderr[-4000:]}")
    settled_s = time.monotonic() - started

    assert "calls.xlsx" in done
    receipt = await _read(pod, f"{INBOX}/done/calls.xlsx.result.txt")
    assert "IMPORTED" in receipt
    assert "broken.xlsx" in rejected
    assert "row 3" in await _read(pod, f"{INBOX}/rejected/broken.xlsx.result.txt")
    [call] = emulator.uploads  # iSales fetched the valid list over SFTP from the server container
    assert call.file_path.startswith("/inbox/spring-sale/processing/")
    assert call.fetched_sha256 is not None

    ready = podman(
        "exec", pod.container("watcher"), "isales-watcher", "probe", "ready", check=False
    )
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.startswith("ready: ok")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{CONTROL_PORT}/metrics") as answer,
    ):
        metrics = await answer.text()
    assert 'isales_watcher_build_info{python="3.11' in metrics
    assert f'version="{__version__}"' in metrics

    for which in ("sftp", "watcher"):
        state = json.loads(podman("inspect", pod.container(which)).stdout)[0]
        assert state["HostConfig"]["ReadonlyRootfs"] is True, which
        assert state["Config"]["User"] == "10001:10001" or state["Config"]["User"] == "10001", which

    stopping = time.monotonic()
    podman("pod", "stop", "--time", "40", f"{pod.name}-pod-0", timeout_s=120)
    stop_s = time.monotonic() - stopping
    state = json.loads(podman("inspect", pod.container("watcher")).stdout)[0]["State"]
    logs = podman("logs", pod.container("watcher")).stderr
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert state["ExitCode"] == 0, logs[-3000:]
    assert events[-1] == "daemon.stopped", events[-5:]
    assert "daemon.stopping" in events
    print(
        f"\nsidecar pod: both files settled {settled_s:.1f} s after the uploads; "
        f"drained and exited 0 {stop_s:.1f} s after pod stop"
    )
    # slirp4netns publishes the ports without a host firewall rule (netavark's bridge would).
    assert "netavark" not in await asyncio.to_thread(_firewall_rules)


# --- the compose trial, as the README gives it ---------------------------------------------

TRIAL_PORTS = (2222, 9187, 28080)  # deploy/compose.yaml, on the host's loopback


def _readme_block(heading: str) -> list[str]:
    """The lines of the first ``sh`` block under ``heading`` in the README, comments dropped."""
    text = (DEPLOY.parent / "README.md").read_text()
    section = text.split(heading, 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    lines, pending = [], ""
    for raw in block.splitlines():
        line = re.sub(r"\s+#.*$", "", raw) if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        pending += line.strip() + " "
        if not line.rstrip().endswith("\\"):
            lines.append(pending.replace("\\ ", "").strip())
            pending = ""
    return lines


def _trial_steps() -> tuple[list[str], str, str, str]:
    """The README's trial: the steps up to the drop, the listing of done/, the logs, the down."""
    lines = _readme_block("### Beside the SFTP server, in containers")
    assert lines[0].startswith("make image"), lines[0]
    assert lines[1] == "cd deploy", lines[1]
    follow = [line for line in lines if line.endswith("logs -f watcher")]
    down = [line for line in lines if line.startswith("podman-compose down")]
    steps = [line for line in lines[2:] if line not in follow + down]
    assert len(follow) == 1, lines
    assert down == ["podman-compose down -v"], lines
    *setup, listing = steps
    assert "ls inbox/trial/done" in listing, listing
    return setup, listing, follow[0], down[0]


def test_the_compose_trial_works_as_the_readme_gives_it(images, tmp_path):
    """The README's compose commands, run as written in a copy of deploy/: up, drop a list with
    OpenSSH's sftp, find its receipt in done/, down. Only `make image` (the fixture built the
    images) and `logs -f` (it never ends) are left out."""
    for port in TRIAL_PORTS:
        if not _port_is_free(port):
            pytest.fail(f"port {port} is taken on this machine; the compose trial publishes it")
    if shutil.which("sftp") is None:
        pytest.fail("missing for the compose trial: apt-get install openssh-client")
    setup, listing, follow, down = _trial_steps()
    root = tmp_path / "clone"
    shutil.copytree(DEPLOY, root / "deploy", ignore=shutil.ignore_patterns("secrets"))
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    project = f"{images.podman.prefix}trial"
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(images.podman.conf),
        "COMPOSE_PROJECT_NAME": project,
        "WATCHER_IMAGE": images.watcher,
        "SFTP_IMAGE": images.sftp,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    def sh(command: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=root / "deploy",
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    try:
        for line in setup:
            if line.startswith("sftp "):  # a person types slower than sshd starts
                asyncio.run(_wait_for_ssh(TRIAL_PORTS[0], 60))
            ran = sh(line)
            assert ran.returncode == 0, f"{line}\n{ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"
        deadline = time.monotonic() + 90
        while True:
            ran = sh(listing, timeout_s=30)
            if "calls.xlsx.result.txt" in ran.stdout:
                break
            if time.monotonic() > deadline:
                logs = sh("podman-compose logs watcher")
                pytest.fail(f"no receipt in done/ after 90 s:\n{ran.stdout}\n{logs.stdout[-4000:]}")
            time.sleep(1)
        ran = sh(follow.replace("logs -f", "logs"), timeout_s=60)
        assert "file.settled" in ran.stdout + ran.stderr, ran.stdout[-3000:]
    finally:
        ran = sh(down)
        images.podman("pod", "rm", "--force", "--time", "0", f"pod_{project}", check=False)
    assert ran.returncode == 0, ran.stderr[-3000:]
    left = images.podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [name for name in left if name.startswith(project)] == []
    assert [name for name in images.podman.names("volume") if name.startswith(project)] == []
    print(f"\ncompose trial: {len(setup)} README steps, receipt in done/, down -v clean")
