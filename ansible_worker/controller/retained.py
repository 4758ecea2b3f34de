"""What the broker holds now, for controllers: the session's barrier and retained read (`mqtt.retained`)."""

from __future__ import annotations

from ansible_worker.mqtt.retained import BARRIER_WITHIN, barrier, receive_unless_reconnected, retained

__all__ = ["BARRIER_WITHIN", "barrier", "receive_unless_reconnected", "retained"]
