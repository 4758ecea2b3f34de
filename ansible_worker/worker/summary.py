"""What `ansible-worker validate` prints: the effective configuration on one screen, secrets masked."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ansible_worker.ops.config import Settings
from ansible_worker.ops.config_source import DEFAULT_CONFIG_FILE
from ansible_worker.ops.credentials import describe
from ansible_worker.protocol.topics import Topics
from ansible_worker.run.argv import child_environment
from ansible_worker.run.executables import Executable, find_ansible_playbook, find_executable
from ansible_worker.run.special_vars import describe_allowed
from ansible_worker.worker.templating import worker_templates


def _names(environment: Mapping[str, object]) -> str:
    if not environment:
        return "nothing added for Ansible"
    return f"{', '.join(sorted(environment))} for Ansible (values hidden)"


def _credentials(settings: Settings) -> str:
    credentials = settings.worker.credentials
    if not credentials:
        return "none"
    return "; ".join(describe(name, credential) for name, credential in sorted(credentials.items()))


def _sources(settings: Settings) -> str:
    """Where jobs' playbooks may come from: projects (names and URLs, no credentials), shipping, the cache."""
    from ansible_worker.run.sources.git import redacted
    from ansible_worker.run.sources.job_sources import cache_root

    worker = settings.worker
    projects = ", ".join(f"{name} ({redacted(project.url)})" for name, project in sorted(worker.projects.items()))
    shipping = "allowed" if worker.allow_shipped_content else "off"
    root = cache_root(worker)
    cache = str(root) if root is not None else f"a new private directory in {tempfile.gettempdir()}, removed at exit"
    return f"projects: {projects or '(none)'}; shipped content {shipping}; cache {cache}"


def _templates(settings: Settings) -> str:
    worker = settings.worker
    if worker.templates is None:
        return "none"
    names = sorted(worker_templates(settings).by_name)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    only = "; plain requests refused (templates_only)" if worker.templates_only else ""
    return f"{len(names)} in {worker.templates} ({shown}){only}"


def _notifications(settings: Settings) -> str:
    # By label: a URL may hold a token, and a secret is never printed.
    targets = settings.worker.notifications
    shown = ", ".join(f"{target.label} ({target.format}{', signed' if target.secret else ''})" for target in targets)
    return shown or "none"


def _http(settings: Settings) -> str:
    http = settings.worker.http
    if http.port is None:
        return "off (set worker.http.port for /healthz, /readyz and /metrics)"
    return f"http://{http.host}:{http.port}/healthz, /readyz, /metrics"


def _signatures(settings: Settings) -> str:
    security = settings.security
    if not security.require_signed_tasks:
        return "not required (anyone who may publish on the tasks topic can run a job)"
    keys = ", ".join(sorted(security.trusted_keys))
    signing = security.claim_signing
    claims = ""
    if signing is not None:
        claims = f"; claims signed by worker_key {signing[0].fingerprint}, trusted: {', '.join(signing[1].names)}"
    return f"required, trusted keys: {keys}; max age {security.max_task_age:g}s{claims}"


def _claim_keys(settings: Settings) -> list[str]:
    """What the group's other workers need so that their claims count here (with signatures only)."""
    security = settings.security
    if security.claim_signing is None:
        return []
    consequence = "claims signed by a key not listed do not count, and a task_id can run twice"
    if not security.worker_keys:
        needs = (
            "this worker's worker_key only: the other workers of the group must share it, or each worker must"
            f" list the public keys of the others under security.worker_keys; {consequence}"
        )
    else:
        needs = (
            f"this worker's worker_key and {', '.join(sorted(security.worker_keys))}: every worker of the group"
            f" must list the public key of each worker that does not share its worker_key; {consequence}"
        )
    return [f"  claim keys    {needs}"]


def executables(settings: Settings) -> tuple[Executable, Executable]:
    """The ansible-playbook and git that jobs would run, found as the job runner finds them."""
    worker = settings.worker
    environment = child_environment(
        os.environ, extra={name: value.get_secret_value() for name, value in worker.environment.items()}
    )
    git = find_executable(worker.git_path, search_path=environment.get("PATH", os.defpath))
    return find_ansible_playbook(worker.ansible_playbook_path, environment), git


def summarize(settings: Settings, path: Path | None) -> str:
    """A one-screen view of the effective configuration, secrets masked."""
    mqtt, worker = settings.mqtt, settings.worker
    topics = Topics(worker.topic_prefix, worker.group_name)
    source = (
        str(path)
        if path is not None
        else (str(DEFAULT_CONFIG_FILE) if DEFAULT_CONFIG_FILE.exists() else "environment only")
    )
    ansible_playbook, git = executables(settings)
    password = "(set, hidden)" if mqtt.password is not None else "(none)"
    tls = "off"
    if mqtt.tls_enabled:
        tls = f"on (CA {mqtt.tls_ca_cert or 'system store'}" + (
            f", client cert {mqtt.tls_client_cert})" if mqtt.tls_client_cert else ")"
        )
    lines = [
        f"configuration OK ({source})",
        "",
        f"  broker        {mqtt.host}:{mqtt.port}  tls {tls}",
        f"  credentials   user {mqtt.username or '(none)'}  password {password}",
        f"  client id     {mqtt.client_id or 'ansible-worker-' + worker.worker_id}  keepalive {mqtt.keepalive}s",
        f"  worker        {worker.worker_id} in group {worker.group_name}",
        f"  playbooks     {worker.playbook_directory}",
        f"  capacity      {worker.concurrency} at once, queue of {worker.max_queue_size}",
        f"  timeouts      job {worker.task_timeout:g}s, git {worker.git_timeout:g}s, kill grace {worker.kill_grace:g}s",
        f"  executables   {ansible_playbook.describe()}",
        f"                {git.describe()}",
        f"  messages      up to {worker.max_message_bytes} bytes; status every {worker.status_interval:g}s at most",
        f"  log level     {settings.log_level}",
        f"  environment   {_names(worker.environment)}",
        f"  credentials   {_credentials(settings)}",
        f"  host keys     {worker.known_hosts or 'SSH defaults (set worker.known_hosts for strict checking)'}",
        f"  extra_vars    {describe_allowed(worker.allowed_special_vars)}",
        f"  signatures    {_signatures(settings)}",
        *_claim_keys(settings),
        f"  http          {_http(settings)}",
        f"  sources       {_sources(settings)}",
        f"  templates     {_templates(settings)}",
        f"  notifications {_notifications(settings)}",
        "",
        f"  jobs from     {topics.tasks_subscription(shared=worker.shared_subscription)}",
        f"  status on     {topics.status('<task_id>')} (retained)",
    ]
    if ansible_playbook.path is None:
        lines.append(f"  problem: worker.ansible_playbook_path: {ansible_playbook.describe()}: every job will fail")
    if git.path is None:
        lines.append(f"  warning: worker.git_path: {git.describe()}: jobs with git_pull will fail")
    if (risk := settings.lost_after_warning()) is not None:
        lines.append(f"  warning: {risk}")
    if worker.state_dir is not None:
        from ansible_worker.worker.journal import exposure

        problem = exposure(worker.state_dir)
        if problem is not None:
            lines.append(f"  warning: worker.state_dir: {problem}")
    return "\n".join(lines)
