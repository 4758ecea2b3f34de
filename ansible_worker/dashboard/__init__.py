"""The web dashboard: a controller-side page showing a group's workers and jobs live, with cancel and run again.

May import `protocol`, `mqtt`, `controller`, `lone_errors`, `ops.config` and `history` (lazily,
only when `history.url` is set), never `worker` or `run`: it is a controller, and sees the
group's live state only through the broker.
"""
