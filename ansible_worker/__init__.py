"""ansible-worker: run Ansible playbooks on request from an MQTT broker, with live status."""

# A plain constant (pyproject.toml reads it): importlib.metadata would cost the worker
# process a few megabytes and milliseconds at every start.
__version__ = "0.1.0"

__all__ = ["__version__"]
