"""The controller side: the Python client, the CLI commands that use it, and their views.

May import `protocol` and `mqtt`, and `ops.config` only where a command reads a config file (lazily);
never `worker` or `run`. The client imports the settings model only for its type, so it loads
neither pydantic-settings nor the worker tree.
"""
