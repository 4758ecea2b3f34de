"""The controller side: the Python client, the CLI commands that use it, and their views.

Three layers, each importing only the ones below it: the commands (`command_line`, then
`job_commands`, `record_commands`, `terminal`, `view`, `artifacts`); the client (`client`,
`job_handle`, `submission`, `retained`, `shipping`, `target`), over one
`mqtt.session.BrokerSession`; and leaves that import nothing of the controller but its
errors (`errors`, `payloads`, `job_filter`, `parser`, `arguments`).

May import `protocol`, `mqtt` and `lone_errors`, `ops.config` only where a command reads a
config file (lazily), and `history` only when `history.url` is set (lazily); never `worker` or
`run`. Settings reach the client as a frozen `Target`; `target` names the settings model only
for its type, so the client loads neither pydantic-settings nor the worker tree.
"""
