"""The service: its nursery tree, the pure router, the job table (each job's phase, journaled),
claims, the slots, drain, presence, and the one status path (outbox, publisher).

The job table (`jobs`) owns every job's lifecycle: its phase, pending cancel and claim, and
the journal, which nothing else writes. Only `policies` (which builds them once), `service`,
`main` and `summary` read the settings model: the other parts are given its frozen values.

May import `protocol`, `mqtt`, `run`, `ops` and `templates`, never `controller`.
"""
