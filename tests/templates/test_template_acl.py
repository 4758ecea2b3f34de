"""The shipped ACL and templates: workers retain the catalogue, controllers read it and launch, neither forges it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import yaml

from ansible_worker.mqtt.link import PublishRefused, open_mqtt_link
from tests.conftest import make_settings, running_worker
from tests.ops.test_acl import GROUP, TOPICS, SecureBroker, controller, secure_broker
from tests.templates.test_launch import TEMPLATES

__all__ = ["secure_broker"]  # the fixture, used by name


async def test_the_catalogue_under_the_shipped_acl(secure_broker: SecureBroker, playbook_dir: Path) -> None:
    (playbook_dir / "templates.yml").write_text(yaml.safe_dump(TEMPLATES))
    settings = make_settings(
        secure_broker.broker.port,
        playbook_dir,
        GROUP,
        mqtt=secure_broker.mqtt_settings("ansible-worker"),
        templates="templates.yml",
        templates_only=True,
    )
    async with controller(secure_broker) as client:
        published = await client.subscribe([TOPICS.templates])
        async with running_worker(settings):
            # Published once the worker has read what the broker held.
            with trio.fail_after(15):
                await published.receive()
            catalogue = await client.catalogue()
            assert catalogue is not None
            assert set(catalogue.templates) == {"greet"}
            assert catalogue.templates_only is True
            async with open_mqtt_link(secure_broker.link("ansible-controller", "forger")) as forger:
                with pytest.raises(PublishRefused, match="Not authorized"):
                    await forger.publish(TOPICS.templates, b"{}", qos=1, retain=True)
            handle = await client.submit({"template": "greet", "extra_vars": {"greeting": "hello there"}})
            async with handle:
                final = await handle.wait()
    assert final["state"] == "success", final
