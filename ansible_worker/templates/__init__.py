"""Job templates kept as code: the templates file, a request expanded from one, and the ticks of its schedules.

`model` is the file's shape (strict: an unknown key is refused by name), `loading` reads and
checks it against the playbook directory, `expansion` turns a request that names a template
into the full request, `schedules` computes each entry's ticks and their task ids, and
`catalogue` describes the templates for launchers (never a secret's default).

May import `protocol`, `run.argv`, `run.errors` and `run.special_vars` (the path and name
checks jobs pass), nothing else of ansible_worker: it opens no socket and runs no process.
"""
