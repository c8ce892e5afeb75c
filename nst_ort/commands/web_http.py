"""The HTTP side of `nst-ort web` that any local file server needs, whatever it serves.

- A bounded server: at most `max_connections` connections are handled at once (one thread each); one
  more is answered 503 at once and closed, never queued behind a thread. Each request must arrive whole
  (request line and headers) within `request_timeout` seconds of the connection's previous request (or
  of its opening), however slowly its bytes trickle in, and each send may block at most `io_timeout`
  seconds: a client that stops half-way holds its thread that long at most.
- The Host check against DNS rebinding: a page from another site whose name the attacker re-points at
  this machine sends that name as Host, so only names that cannot be re-pointed are accepted.
- Quiet failures: a client that goes away mid-download (broken pipe, reset, timeout) is not an error
  of the server's, so no traceback; any other failure is one line on stderr.
"""
from __future__ import annotations

import io
import ipaddress
import socket
import sys
import threading
import time
from http.server import ThreadingHTTPServer

MAX_CONNECTIONS = 32  # a page load opens about 6; room for several tabs and reloads
REQUEST_TIMEOUT = 15.0  # seconds for a whole request head (and the idle wait of a kept-alive connection)
IO_TIMEOUT = 30.0  # seconds one send may block on a client that does not read


def say(line: str, stream=None) -> None:
    """Print a line; a closed or broken stream (`nst-ort web | true`) must not stop the server."""
    stream = stream or sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def host_allowed(host_header: str | None, extra_names: frozenset[str] = frozenset()) -> bool:
    """Whether a request's Host names this server in a way no other site can: an IP address literal
    (the browser connected to exactly that address), `localhost` or a name under `.localhost` (browsers
    resolve those to loopback themselves), or one of `extra_names` (this machine's own name, for a
    non-loopback --host). Any port: a tunnel (ssh -L 9000:127.0.0.1:8765) changes it, and a rebinding
    attack needs a name, not a port."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6] or [v6]:port
        end = host.find("]")
        rest = host[end + 1:] if end > 0 else "?"
        if rest and not (rest[:1] == ":" and rest[1:].isdigit()):
            return False
        try:
            ipaddress.IPv6Address(host[1:end])
        except ValueError:
            return False
        return True
    name, _, port = host.partition(":")
    if port and not port.isdigit() or not name:
        return False
    name = name.rstrip(".")
    try:
        ipaddress.IPv4Address(name)
        return True
    except ValueError:
        pass
    return name == "localhost" or name.endswith(".localhost") or name in extra_names


class _DeadlineSocketIO(socket.SocketIO):
    """A socket reader whose every recv waits only as long as is left of the handler's deadline, so a
    request trickled in a byte at a time still ends when the deadline does."""

    def __init__(self, sock: socket.socket, handler):
        super().__init__(sock, "rb")
        self._handler = handler

    def readinto(self, b):
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return super().readinto(b)


class DeadlineHandlerMixin:
    """For a BaseHTTPRequestHandler: the request head within server.request_timeout, sends within
    server.io_timeout (see BoundedHTTPServer)."""

    deadline = 0.0

    def setup(self):
        super().setup()
        self.rfile.close()  # the plain reader that StreamRequestHandler made: replaced by one with a deadline
        self.rfile = io.BufferedReader(_DeadlineSocketIO(self.connection, self))

    def handle_one_request(self):
        self.deadline = time.monotonic() + self.server.request_timeout
        super().handle_one_request()

    def parse_request(self):
        ok = super().parse_request()
        self.connection.settimeout(self.server.io_timeout)  # the head is in: now the response's sends
        return ok


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most max_connections handler threads, and quiet client failures."""

    daemon_threads = True
    # A burst of connections waits in the kernel's queue, not refused, while threads are free.
    request_queue_size = 64

    def __init__(self, address, handler, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, io_timeout: float = IO_TIMEOUT, verbose: bool = False):
        self.max_connections, self.request_timeout, self.io_timeout = max_connections, request_timeout, io_timeout
        self.verbose = verbose
        self._slots = threading.BoundedSemaphore(max_connections)
        if ":" in str(address[0]):
            self.address_family = socket.AF_INET6
        self.refused = 0  # connections answered 503 because every slot was taken
        super().__init__(address, handler)

    @property
    def active(self) -> int:
        """Connections being handled now (each has a thread)."""
        return self.max_connections - self._slots._value

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self._busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: its slot is free again
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _busy(self, request):
        """503 from the accepting thread: a few bytes into the socket's buffer (never blocks long), closed."""
        body = b"nst-ort web: too many connections; try again\n"
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {int(self.request_timeout) + 1}\r\n"
                "Connection: close\r\nServer: nst-ort\r\n\r\n")
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + body)
            # what the client sent already, read without waiting: unread bytes would make the close a
            # reset, which can discard the 503 before the client reads it
            request.setblocking(False)
            request.recv(1 << 16)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            # the client went away or stalled (an aborted download, a closed tab): nothing to report
            if self.verbose:
                say(f"nst-ort web: {client_address[0]}: connection ended ({type(exc).__name__})")
            return
        say(f"nst-ort web: error while serving {client_address[0]}: {type(exc).__name__}: {exc}")
