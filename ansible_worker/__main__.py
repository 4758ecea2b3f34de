"""Let `python -m ansible_worker` behave exactly like the `ansible-worker` command."""

from ansible_worker.cli import main

raise SystemExit(main())
