"""What the link does with a connection's socket beside paho: TLS set-up, corking, and closing it for sure."""

from __future__ import annotations

import contextlib
import socket
import ssl
import traceback
from typing import Any

import trio

from ansible_worker.mqtt.options import LinkOptions


def tls_context(options: LinkOptions) -> ssl.SSLContext:
    """The TLS context of `options`: its CA (else the system's), and its client certificate if any."""
    cafile = str(options.tls_ca_cert) if options.tls_ca_cert else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if options.tls_client_cert is not None:
        keyfile = str(options.tls_client_key) if options.tls_client_key else None
        context.load_cert_chain(str(options.tls_client_cert), keyfile)
    return context


def set_cork(sock: Any, *, on: bool) -> None:
    """Hold small writes back until uncorked, so that a burst leaves in full segments."""
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a Unix socket), or already gone
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)


def still_open(current: Any, sock: Any) -> bool:
    """Whether `sock` is the `current` socket of its client, and open."""
    return current is not None and current is sock and current.fileno() != -1


def close_quietly(sock: Any) -> None:
    """Close a socket that may be gone already; None is no socket."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def release_frames(exc: BaseException | None) -> None:
    """Close the sockets left in the frames of `exc`'s tracebacks (and its causes'), then drop the frames.

    paho's failed TLS handshake leaves its socket, unclosed, in a local of a frame on the
    traceback, where only the garbage collector would find it.
    """
    while exc is not None:
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            for value in frame.f_locals.values():
                if isinstance(value, socket.socket):
                    value.close()
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


async def wait_for_broker_close(connection: socket.socket) -> None:
    """Read and drop what the broker still sends after our DISCONNECT, until it closes the connection.

    Cancellation: the caller bounds it; the connection is then closed with data unread.
    """
    while True:
        await trio.lowlevel.wait_readable(connection)
        try:
            if not connection.recv(65536):
                return
        except BlockingIOError:
            continue
        except OSError:
            return
