"""Podman for the deploy tests: the engine set up as it works here, a base image from Debian
packages, the images built from deploy/, and the Kubernetes example rendered as kustomize would.

Everything a test creates carries one prefix, so that the clean-up finds it all even after a
failure. See ``../shared/research/test-infra.md`` §4 for why runc, pinned ulimits, debootstrap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The packages of the test base: Python for the watcher, OpenSSH for the SFTP server image.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "openssh-server")
BASE_CACHE = Path("/var/cache/isales-watcher")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""
# What each tool is, for the message when it is missing (.ci/run installs them all).
TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "catatonit": "catatonit",
    "slirp4netns": "slirp4netns",
    "debootstrap": "debootstrap",
}


def require_tools() -> None:
    """Fail (never skip) naming the Debian package of each missing tool."""
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing:
        pytest.fail(f"missing for the container tests: apt-get install {' '.join(missing)}")


@dataclass
class Podman:
    """podman with this machine's working configuration, and a record of what it made."""

    conf: Path
    prefix: str
    images: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)  # made under names without the prefix
    images_before: set[str] = field(default_factory=set)

    def __call__(
        self, *args: str, check: bool = True, timeout_s: float = 300, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        result = subprocess.run(
            ["podman", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
            check=False,
            **kwargs,
        )
        if check and result.returncode != 0:
            pytest.fail(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def names(self, kind: str) -> list[str]:
        """The names of this test's pods, volumes or secrets (made with its prefix)."""
        fmt = "{{.Name}}"
        listed = self(kind, "ls", "--format", fmt, check=False).stdout.split()
        return [name for name in listed if name.startswith(self.prefix)]

    def clean_up(self) -> None:
        """Remove every pod, container, volume, secret and image this test made."""
        for pod in self.names("pod"):
            self("pod", "rm", "--force", "--time", "0", pod, check=False)
        containers = self("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        for name in containers:
            if name.startswith(self.prefix):
                self("rm", "--force", "--time", "0", name, check=False)
        for volume in [*self.names("volume"), *self.volumes]:
            self("volume", "rm", "--force", volume, check=False)
        for secret in self.names("secret"):
            self("secret", "rm", secret, check=False)
        for image in reversed(self.images):
            self("rmi", "--force", image, check=False)
        # Untagged images made meanwhile: the build stages, podman's own pause image for pods.
        for image in self.image_ids() - self.images_before:
            self("rmi", "--force", image, check=False)

    def image_ids(self) -> set[str]:
        listed = self("images", "--all", "--quiet", "--no-trunc", check=False).stdout
        return set(listed.split())


@contextlib.contextmanager
def podman_session(folder: Path) -> Iterator[Podman]:
    require_tools()
    conf = folder / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    engine = Podman(conf, f"iwtest{os.getpid()}-")
    engine.images_before = engine.image_ids()
    try:
        yield engine
    finally:
        engine.clean_up()


def _debootstrap_base(tarball: Path) -> None:
    """A minimal Debian with the base packages, as a tarball (cached: it takes a minute)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="isales-base-", dir=tarball.parent) as scratch:
        root = Path(scratch) / "rootfs"
        made = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if made.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}")
        # No host keys, package lists or downloaded packages in the base.
        for pattern in (
            "etc/ssh/ssh_host_*",
            "var/cache/apt/archives/*.deb",
            "var/lib/apt/lists/*",
        ):
            for path in root.glob(pattern):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_suffix(".partial")
        with tarfile.open(partial, "w:gz", compresslevel=1) as archive:
            archive.add(root, arcname=".")
        partial.rename(tarball)
        shutil.rmtree(root, ignore_errors=True)


def base_image(podman: Podman) -> str:
    """The Debian-made base image, imported under this test's prefix."""
    key = hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:12]
    tarball = BASE_CACHE / f"debian-bookworm-base-{key}.tar.gz"
    if not tarball.exists():
        _debootstrap_base(tarball)
    name = f"localhost/{podman.prefix}base:bookworm"
    podman("import", str(tarball), name)
    podman.images.append(name)
    return name


_PIP_WHEEL = (sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w")


def build_wheels(folder: Path) -> Path:
    """The project's wheel and its dependencies', made on the host (no index in a build)."""
    wheels = folder / "wheels"
    made = subprocess.run(
        [*_PIP_WHEEL, str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if made.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{made.stderr[-3000:]}")
    return wheels


def build(
    podman: Podman, name: str, context: Path, base: str, dockerfile: Path | None = None
) -> str:
    """Build an image from deploy/ on the Debian-made base, with no network."""
    tag = f"localhost/{podman.prefix}{name}:test"
    args = ["build", "--format", "docker", "--network", "none", "--build-arg"]
    args += [f"BASE_IMAGE={base}", "--tag", tag]
    if dockerfile is not None:
        args += ["--file", str(dockerfile)]
    podman.images.append(tag)
    podman(*args, str(context), timeout_s=600)
    return tag


def layers_contain(podman: Podman, image: str, needles: list[bytes], folder: Path) -> list[str]:
    """Which of ``needles`` appear anywhere in the saved image (every layer, the config)."""
    archive = folder / f"{image.rsplit('/', 1)[-1].replace(':', '-')}.tar"
    podman("image", "save", "--format", "docker-archive", "--output", str(archive), image)
    found: set[bytes] = set()
    with tarfile.open(archive) as outer:
        for member in outer:
            data = outer.extractfile(member)
            if data is None:
                continue
            blob = data.read()
            if member.name.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(blob)) as layer:
                    for inner in layer:
                        handle = layer.extractfile(inner) if inner.isfile() else None
                        if handle is not None:
                            content = handle.read()
                            found.update(n for n in needles if n in content)
            found.update(n for n in needles if n in blob)
    archive.unlink()
    return sorted(n.decode() for n in found)


def kustomize(
    folder: Path,
    *,
    prefix: str,
    files: dict[str, str],
    images: dict[str, str],
) -> list[dict[str, Any]]:
    """Render ``kustomization.yaml`` as ``kubectl kustomize`` would, for what it uses.

    Its resources, its generators (``files`` gives the content of each generator file, which a
    test writes itself: the secrets, its own config), ``images`` overrides and a ``namePrefix``
    on every object and every reference to one.

    One change for podman 4.3, whose ``kube play`` writes a Secret's ``data`` into the files
    still base64-encoded (and ignores ``stringData``): the Secret is played as a ConfigMap of
    the same name, and the secret volumes as configMap volumes with the same keys and mode.
    """
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for generator in spec.get("configMapGenerator", []):
        data = {Path(f).name: files[f] for f in generator["files"]}
        docs.append(_object("ConfigMap", generator["name"], {"data": data}))
    for generator in spec.get("secretGenerator", []):
        data = {Path(f).name: files[f] for f in generator["files"]}
        docs.append(_object("ConfigMap", generator["name"], {"data": data}))
    for resource in spec["resources"]:
        docs.extend(yaml.safe_load_all((folder / resource).read_text()))
    overrides = {item["name"]: item.get("newTag") for item in spec.get("images", [])}
    for doc in docs:
        _prefix_names(doc, prefix)
        for container in _containers(doc):
            repository = container["image"].split(":")[0]
            if repository in images:
                container["image"] = images[repository]
            elif repository in overrides:
                container["image"] = f"{repository}:{overrides[repository]}"
    return docs


def _object(kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, **body}


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    containers: list[dict[str, Any]] = pod.get("containers", [])
    return containers


def _prefix_names(doc: dict[str, Any], prefix: str) -> None:
    doc["metadata"]["name"] = prefix + doc["metadata"]["name"]
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    for volume in pod.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            claim["claimName"] = prefix + claim["claimName"]
        if "configMap" in volume:
            volume["configMap"]["name"] = prefix + volume["configMap"]["name"]
        if "secret" in volume:
            source = volume.pop("secret")
            source["name"] = prefix + source.pop("secretName")
            volume["configMap"] = source
