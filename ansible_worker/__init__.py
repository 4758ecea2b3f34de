"""ansible-worker: run Ansible playbooks on request from an MQTT broker, with live status."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ansible-worker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
