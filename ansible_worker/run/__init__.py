"""One playbook run: what a job may ask (`policy`), its argv and environment, where its playbooks come
from (`sources/`), how its processes start, warm (`warm/`) or cold, and end (`process/`), what it
reports (`events/`), and the error boundary that gives each job one terminal status (`runner`).

Knows nothing of MQTT nor of the worker that carries it: statuses, events and records leave
through the sinks it is given (`sinks`). `wiring` builds the parts from the settings once; no
other part sees them. May import `protocol`, `lone_errors` and the leaf modules
`ops.logging_setup`, `ops.metrics`, `ops.credentials` and `ops.private_paths`, and
`ops.config` for its types alone; never `mqtt`, `worker`, `controller` or `dashboard`.
"""
