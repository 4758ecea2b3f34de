"""The controller side: the Python client, the CLI commands that use it, and their views.

May import `protocol` and `mqtt`, never `worker` or `run`. Settings come in as plain values, so
the client loads neither pydantic-settings nor the worker tree.
"""
