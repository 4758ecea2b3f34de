"""The web dashboard: a controller-side page showing a group's workers and jobs live, with cancel and run again.

May import `protocol`, `mqtt`, `controller`, `lone_errors` and `ops.config`, never `worker` or
`run`: it is a controller, and sees the group only through the broker.
"""
