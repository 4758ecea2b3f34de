"""The container image recipe and the Kubernetes manifests, checked without a cluster or a container engine.

Every manifest is validated against the Kubernetes schemas (kubernetes-validate, offline), and
the settings they depend on are read from the shipped config rather than restated here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ansible_worker.dashboard.feed import MAX_PAYLOAD as DASHBOARD_MAX_PAYLOAD
from ansible_worker.ops.config import load_settings
from ansible_worker.protocol.models import CONTENT_PART_BYTES
from ansible_worker.run.sources.job_sources import cache_problem
from ansible_worker.worker.drain import SHUTDOWN_MARGIN
from tests.conftest import REPO
from tests.deployment import containerfile

ROOT = REPO
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


@pytest.mark.parametrize("name", sorted(manifests()))
def test_manifest_is_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(manifests()[name], KUBERNETES_VERSION, strict=True)


def test_validation_is_not_a_rubber_stamp() -> None:
    broken = json.loads(json.dumps(manifests()["Deployment/ansible-worker"]))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystm"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def shipped_settings(tmp_path: Path) -> Any:
    """The ConfigMap's config.yaml, loaded as the worker loads it, with its files made here."""
    text = manifests()["ConfigMap/ansible-worker-config"]["data"]["config.yaml"]
    for directory in ("/srv/playbooks", "/var/lib/ansible-worker/state", "/var/lib/ansible-worker/runs"):
        (tmp_path / directory.strip("/")).mkdir(parents=True)
        text = text.replace(directory, str(tmp_path / directory.strip("/")))
    key = tmp_path / "ci.pub"
    from ansible_worker.protocol.signing import generate_key_pair

    generate_key_pair(tmp_path / "ci.key", key)
    worker_key = tmp_path / "worker.key"
    generate_key_pair(worker_key, tmp_path / "worker.pub")
    ca = tmp_path / "ca.crt"
    ca.write_text("a CA bundle\n")
    text = text.replace("/etc/ansible-worker/worker-key/worker.key", str(worker_key))
    text = text.replace("/etc/ansible-worker/keys/ci.pub", str(key)).replace("/etc/ansible-worker/tls/ca.crt", str(ca))
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return load_settings(config, environ={"MQTT_PASSWORD": "from-the-secret", "POD_NAME": "ansible-worker-7d9-x2x9z"})


def test_deployment_fits_the_shipped_config(tmp_path: Path) -> None:
    settings = shipped_settings(tmp_path)
    deployment = manifests()["Deployment/ansible-worker"]
    pod = deployment["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    # A rolling update lets a draining worker finish, cancel and report before it is killed.
    needed = settings.worker.drain_timeout + settings.worker.kill_grace + SHUTDOWN_MARGIN
    assert pod["terminationGracePeriodSeconds"] > needed
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for container in (*pod["initContainers"], worker):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]
    # Every directory the worker writes to is a volume.
    mounts = {mount["mountPath"]: mount["name"] for mount in worker["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for directory in ("/var/lib/ansible-worker/state", "/var/lib/ansible-worker/runs", "/tmp"):
        assert "emptyDir" in volumes[mounts[directory]]
    assert Path(settings.worker.state_dir).name == "state"
    # The probes ask the endpoint the config turns on.
    port = {p["name"]: p["containerPort"] for p in worker["ports"]}["http"]
    assert port == settings.worker.http.port
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The password comes from a Secret, not from the ConfigMap.
    variables = {variable["name"]: variable for variable in worker["env"]}
    assert variables["MQTT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "ansible-worker-mqtt"
    assert settings.mqtt.password.get_secret_value() == "from-the-secret"
    assert settings.worker.worker_id == "ansible-worker-7d9-x2x9z"
    assert settings.security.require_signed_tasks
    # The worker key is a Secret, mounted where the config looks for it.
    assert settings.security.worker_key is not None
    assert volumes[mounts["/etc/ansible-worker/worker-key"]]["secret"]["secretName"] == "ansible-worker-key"


def test_the_pods_source_cache_passes_on_a_world_writable_volume(tmp_path: Path) -> None:
    settings = shipped_settings(tmp_path)
    state = settings.worker.state_dir
    # As Kubernetes makes an emptyDir with the pod's fsGroup: owned by root, mode 2777.
    state.chmod(0o2777)
    assert cache_problem(settings.worker) is None
    # Only because the pod runs one user: elsewhere the same directory is refused.
    elsewhere = settings.worker.model_copy(update={"single_user": False})
    problem = cache_problem(elsewhere)
    assert problem is not None
    assert f"{state} may be written by every user (mode 2777)" in problem


def test_the_brokers_message_limit_holds_what_the_group_sends(tmp_path: Path) -> None:
    conf = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    (limit,) = (int(value) for value in re.findall(r"^message_size_limit (\d+)$", conf, re.MULTILINE))
    worker = shipped_settings(tmp_path).worker
    # A part of shipped content, a job request, a record: each is one message.
    assert limit >= CONTENT_PART_BYTES
    assert limit >= worker.max_message_bytes
    assert limit >= worker.record_limit_bytes
    # The dashboard skips larger messages on the group's topics, job requests included.
    assert worker.max_message_bytes <= DASHBOARD_MAX_PAYLOAD


def test_disruption_budget_keeps_a_worker(tmp_path: Path) -> None:
    budget = manifests()["PodDisruptionBudget/ansible-worker"]
    labels = manifests()["Deployment/ansible-worker"]["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_image_runs_the_worker_as_a_non_root_user() -> None:
    instructions = containerfile()
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    (entrypoint,) = [json.loads(arguments) for instruction, arguments in instructions if instruction == "ENTRYPOINT"]
    assert entrypoint[-2:] == ["ansible-worker", "run"]
    assert "tini" in entrypoint[0]  # PID 1 that forwards signals and reaps orphans
    assert instructions[0][0] == "FROM"
    assert instructions[0][1].startswith("python:3.11-slim")


def test_image_bakes_in_no_secret() -> None:
    for instruction, arguments in containerfile():
        if instruction in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(?i)password|secret|token|private", arguments), arguments
        if instruction in ("COPY", "ADD"):
            assert not re.search(r"config\.yaml|\.key\b|\.pem\b|id_rsa|id_ed25519", arguments), arguments
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"config.yaml", "*.key", "*.pem", ".git"} <= set(ignored)


def test_ci_runs_the_test_command_of_readme() -> None:
    """CI installs what README's test command installs, then runs the rest of it unchanged."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**The tests**", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    (command,) = block.splitlines()
    steps = command.split(" && ")
    first = next(index for index, step in enumerate(steps) if step.startswith("python3 -m venv"))
    ci = (ROOT / ".ci" / "run").read_text()
    assert " && ".join(steps[first:]) in ci.splitlines()
    packages = {name for match in re.findall(r"apt-get install -y ([^&|)]+)", command) for name in match.split()}
    installed = {name for match in re.findall(r"apt-get install -y ([^&|)\n]+)", ci) for name in match.split()}
    assert packages <= installed
