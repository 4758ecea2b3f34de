"""Describe the MQTT API for other languages: JSON Schemas of the messages and an AsyncAPI 3 document.

Both are generated from the pydantic models the worker itself uses, so they cannot say
something the code does not; `ansible-worker schema` writes them, and a test fails when the
copies checked in under `docs/` drift from the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from ansible_worker import __version__
from ansible_worker.protocol.group_messages import ClaimMessage, LockMessage, Presence, TemplateCatalogue
from ansible_worker.protocol.models import CancelRequest, JobRecord, JobStatus, LiveEvent, TaskRequest

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Each message: its model, whether it is read (validation) or written (serialization) by
# workers, and the file its JSON Schema is written to.
MESSAGES: dict[str, tuple[type[BaseModel], Literal["validation", "serialization"]]] = {
    "task-request": (TaskRequest, "validation"),
    "cancel-request": (CancelRequest, "validation"),
    "status": (JobStatus, "serialization"),
    "event": (LiveEvent, "serialization"),
    "record": (JobRecord, "serialization"),
    "presence": (Presence, "serialization"),
    "claim": (ClaimMessage, "serialization"),
    "lock": (LockMessage, "serialization"),
    "catalogue": (TemplateCatalogue, "serialization"),
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema per message, by file stem."""
    schemas = {}
    for name, (model, mode) in MESSAGES.items():
        schema = model.model_json_schema(mode=mode)
        schemas[name] = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{name}.json", **schema}
    return schemas


_PARAMETERS = {
    "prefix": {"description": "worker.topic_prefix", "default": "ansible"},
    "group": {"description": "worker.group_name"},
    "task_id": {"description": "the job's task_id: 1-128 of A-Z a-z 0-9 . _ -"},
    "worker_id": {"description": "the worker's worker_id"},
    "sha256": {"description": "SHA-256 of the shipped archive, 64 lowercase hex digits"},
    "part": {"description": "the part's number: 0, 1, 2, ... up to size / 4194304"},
}

# channel id: address, message, summary, QoS, retained, what the worker does with it.
_CHANNELS: dict[str, tuple[str, str, str, int, bool, Literal["send", "receive"]]] = {
    "tasks": (
        "{prefix}/{group}/tasks",
        "taskRequest",
        "Jobs. Workers subscribe as $share/ansible-worker-{group}/{prefix}/{group}/tasks, so each job"
        " reaches exactly one worker of the group.",
        2,
        False,
        "receive",
    ),
    "taskStatus": (
        "{prefix}/{group}/tasks/{task_id}/status",
        "status",
        "A job's status: queued, running (with counters), then exactly one terminal state. Retained;"
        " a terminal status expires after worker.status_retention. A refusal of a message that"
        " failed its signature check is sent live only, with refused: true.",
        1,
        True,
        "send",
    ),
    "taskCancel": (
        "{prefix}/{group}/tasks/{task_id}/cancel",
        "cancelRequest",
        "Cancel a queued or running job. Every worker of the group subscribes (not shared). An"
        " empty payload is a request too, unless signatures are required.",
        1,
        False,
        "receive",
    ),
    "taskEvents": (
        "{prefix}/{group}/tasks/{task_id}/events",
        "event",
        "Live Ansible events of a running job, numbered from 1 (QoS is worker.events_qos).",
        0,
        False,
        "send",
    ),
    "taskRecord": (
        "{prefix}/{group}/tasks/{task_id}/record",
        "record",
        "A finished job's record: its terminal status, every event and Ansible's output, zlib-compressed"
        " JSON cut to worker.record_limit_bytes. Published before the terminal status (whose `record`"
        " field gives its size), retained with the same expiry; none with worker.publish_records off.",
        1,
        True,
        "send",
    ),
    "taskClaim": (
        "{prefix}/{group}/tasks/{task_id}/claim",
        "claim",
        "A worker's claim on a task_id before it queues the job, so that it runs once in the group"
        " (and a replayed signed job nowhere); a release when it hands the job back. Retained for"
        " status_retention while the job is unsettled, then worker.claim_lifetime; signed by a worker"
        " key with signatures. Workers only.",
        1,
        True,
        "send",
    ),
    "groupLocks": (
        "{prefix}/{group}/locks",
        "lock",
        "The group's host locks: every request, renewal and release, on one topic so that every worker"
        " hears them in the same order; the first to ask is served first, all its locks at once."
        " Not retained; signed by a worker key with signatures. Workers only.",
        1,
        False,
        "send",
    ),
    "taskRequestCopy": (
        "{prefix}/{group}/tasks/{task_id}/request",
        "taskRequest",
        "The request of a job the group holds and has not settled, byte for byte as the worker that"
        " claimed it took it (signature included), so that a survivor can take the job over if that"
        " worker is lost. Retained from the claim until the job is settled, then cleared (an empty"
        " retained message). Workers only.",
        1,
        True,
        "send",
    ),
    "shippedContent": (
        "{prefix}/{group}/content/{sha256}/{part}",
        "content",
        "Content shipped with jobs: a tar archive (no compression) named by its SHA-256, which a"
        " job gives as content.sha256 and content.size, in parts of 4 MiB (4194304 bytes; the"
        " last one shorter) numbered from 0. Retained with an expiry by the controller that ships"
        " it (only the parts the broker lacks); a worker subscribes only while it fetches one.",
        1,
        True,
        "receive",
    ),
    "templateCatalogue": (
        "{prefix}/{group}/templates",
        "catalogue",
        "The group's job templates: each one's description, playbook, survey (never a secret's"
        " default) and schedule with its next and last runs. Retained; published by each worker with"
        " worker.templates when it starts and after each tick of a schedule.",
        1,
        True,
        "send",
    ),
    "workerPresence": (
        "{prefix}/{group}/workers/{worker_id}",
        "presence",
        "Each worker's presence and load, refreshed every worker.heartbeat_interval; retained. The"
        " broker publishes the worker's will (state offline, stopped lost) when it loses the worker;"
        " a clean shutdown says offline, stopped clean. Signed by the worker key with signatures.",
        1,
        True,
        "send",
    ),
}

_MESSAGE_MODELS: dict[str, type[BaseModel]] = {
    "taskRequest": TaskRequest,
    "cancelRequest": CancelRequest,
    "status": JobStatus,
    "event": LiveEvent,
    "record": JobRecord,
    "presence": Presence,
    "claim": ClaimMessage,
    "lock": LockMessage,
    "catalogue": TemplateCatalogue,
}


def asyncapi_document() -> dict[str, Any]:
    """The MQTT API as an AsyncAPI 3.0 document, from the worker's point of view."""
    _, definitions = models_json_schema(
        [(model, MESSAGES[_file_of(model)][1]) for model in _MESSAGE_MODELS.values()],
        ref_template="#/components/schemas/{model}",
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel_id, (address, message, summary, qos, retain, action) in _CHANNELS.items():
        names = [part.split("}")[0] for part in address.split("{")[1:]]
        channels[channel_id] = {
            "address": address,
            "description": summary,
            "parameters": {name: _PARAMETERS[name] for name in names},
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        }
        verb = "receive" if action == "receive" else "send"
        operations[f"{verb}{channel_id[0].upper()}{channel_id[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": summary.split(". ")[0].rstrip(".") + ".",
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{message}"}],
            "bindings": {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": "0.2.0"}},
        }
    messages = {
        name: {
            "name": name,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/zlib" if model is JobRecord else "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
        for name, model in _MESSAGE_MODELS.items()
    }
    # Not JSON: the archive's bytes as they are, so that no megabytes pass through JSON.
    messages["content"] = {
        "name": "content",
        "title": "ShippedArchive",
        "summary": "One part of a tar archive of the files a job runs from, without .git.",
        "contentType": "application/x-tar",
        "payload": {"type": "string", "format": "binary"},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "ansible-worker",
            "version": __version__,
            "description": (
                "Protocol v1 of ansible-worker: controllers publish Ansible playbook jobs, one worker of"
                " a group runs each and reports its status live. Fields of v1 are never removed or"
                " renamed; new ones may be added, and readers ignore fields they do not know."
            ),
            "license": {"name": "MIT"},
        },
        "servers": {
            "broker": {
                "host": "broker.example.com:8883",
                "protocol": "mqtts",
                "protocolVersion": "5",
                "description": "Any MQTT 5 broker with shared subscriptions (Mosquitto 2, EMQX, HiveMQ, VerneMQ).",
            }
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": definitions["$defs"]},
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes a value used twice out twice, without YAML anchors, which readers of the document trip on."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _file_of(model: type[BaseModel]) -> str:
    return next(name for name, (candidate, _) in MESSAGES.items() if candidate is model)


def write_documents(directory: Path) -> list[Path]:
    """Write `schemas/*.json` and `asyncapi.yaml` under `directory`; the paths written."""
    (directory / "schemas").mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / "schemas" / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=False) + "\n")
        written.append(path)
    path = directory / "asyncapi.yaml"
    header = "# Generated by `ansible-worker schema --output-dir docs`; do not edit by hand.\n"
    text = yaml.dump(asyncapi_document(), Dumper=_PlainDumper, sort_keys=False, width=100, allow_unicode=True)
    path.write_text(header + text)
    written.append(path)
    return written
