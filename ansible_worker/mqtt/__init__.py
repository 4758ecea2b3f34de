"""The broker: the one asyncio adapter (`link`) and the one session that keeps links alive for worker and controller.

The session (`session`) reconnects with one backoff under its owner's `Reconnect` policy
(`reconnect`) and keeps counted subscriptions routed to their readers (`subscriptions`).
Only `link` touches asyncio, through trio-asyncio. May import `protocol` and `lone_errors`,
nothing else of ansible_worker.
"""
