"""A session's subscriptions: who uses which topic filter, at which QoS, and where its messages go; no I/O."""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ansible_worker.mqtt.options import InboundMessage


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` is one of `topic_filter`'s (`+` one level, `#` the rest)."""
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


class Subscriptions:
    """Topic filters counted by their uses, in the order they were first used, and the routes to their readers.

    A filter stays subscribed while anyone uses it, at the highest QoS any use asked for. A
    use is a route (a channel that gets the filter's messages) or a plain use, whose messages
    the session's inbox gets. A route loses what does not fit in its buffer, unless it is
    held: then the session waits for its reader.
    """

    def __init__(self, filters: Iterable[tuple[str, int]] = ()) -> None:
        self._uses: dict[str, int] = {}
        self._qos: dict[str, int] = {}
        self._routes: list[tuple[str, trio.MemorySendChannel[InboundMessage]]] = []
        self._senders: dict[int, trio.MemorySendChannel[InboundMessage]] = {}
        self._held: set[int] = set()
        for topic_filter, qos in filters:
            self.add([topic_filter], qos)

    def add(self, filters: Iterable[str], qos: int) -> None:
        """One use more of each filter."""
        for topic_filter in filters:
            self._uses[topic_filter] = self._uses.get(topic_filter, 0) + 1
            self._qos[topic_filter] = max(qos, self._qos.get(topic_filter, 0))

    def drop(self, filters: Iterable[str]) -> list[str]:
        """One use less of each filter; those that no one uses now (or used at all), to unsubscribe from."""
        unused = []
        for topic_filter in filters:
            uses = self._uses.get(topic_filter, 0) - 1
            if uses > 0:
                self._uses[topic_filter] = uses
                continue
            self._uses.pop(topic_filter, None)
            self._qos.pop(topic_filter, None)
            unused.append(topic_filter)
        return unused

    def open_route(
        self, filters: list[str], qos: int, buffer: int, *, hold: bool = False
    ) -> trio.MemoryReceiveChannel[InboundMessage]:
        """A use of each filter whose messages go to a new channel of `buffer` messages; `hold`: a held route."""
        send, receive = trio.open_memory_channel[InboundMessage](buffer)
        self._senders[id(receive)] = send
        if hold:
            self._held.add(id(send))
        self._routes.extend((topic_filter, send) for topic_filter in filters)
        self.add(filters, qos)
        return receive

    def close_route(self, filters: list[str], receive: trio.MemoryReceiveChannel[InboundMessage]) -> list[str]:
        """Undo `open_route`: the route goes, both ends close; the filters no one uses now.

        Errors: `KeyError` for a channel that has no route (closed already).
        """
        send = self._senders.pop(id(receive))
        self._held.discard(id(send))
        self._routes = [(f, channel) for f, channel in self._routes if channel is not send]
        send.close()
        receive.close()
        return self.drop(filters)

    def route(self, message: InboundMessage) -> list[trio.MemorySendChannel[InboundMessage]]:
        """Hand `message` to every route whose filter it matches, without waiting; the held routes that are full.

        A reader more than its buffer behind, or gone, loses the message rather than stall the
        others, unless its route is held: the caller then sends it there, waiting.
        """
        full = []
        for topic_filter, channel in list(self._routes):
            if matches(topic_filter, message.topic):
                try:
                    channel.send_nowait(message)
                except trio.WouldBlock:
                    if id(channel) in self._held:
                        full.append(channel)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return full

    def in_use(self) -> list[tuple[str, int]]:
        """Every filter in use and its QoS, in the order they were first used."""
        return list(self._qos.items())

    def qos(self, topic_filter: str) -> int | None:
        """The QoS `topic_filter` is used at, or None when no one uses it."""
        return self._qos.get(topic_filter)

    def uses(self) -> dict[str, int]:
        """How many uses each filter has now."""
        return dict(self._uses)

    def routes(self) -> list[tuple[str, trio.MemorySendChannel[InboundMessage]]]:
        """The routes now: each filter with the channel its messages go to."""
        return list(self._routes)
