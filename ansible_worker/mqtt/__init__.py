"""The broker: the one asyncio adapter (`link`) and the session that keeps a link alive.

Only `link` touches asyncio, through trio-asyncio. May import `protocol` and nothing else of
ansible_worker.
"""
