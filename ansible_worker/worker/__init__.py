"""The service: its nursery tree, the pure router, the queue, drain, presence, claims, and the
one status path (outbox, publisher, journal).

May import `protocol`, `mqtt`, `run`, `ops` and `templates`, never `controller`.
"""
