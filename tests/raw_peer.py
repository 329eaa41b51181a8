"""Peers that misbehave for real: a TCP socket with a tiny receive window that speaks WebSocket through the
`websockets` library's sans-I/O protocol (so the frames are right) but reads only when the test says so.

A client library would keep reading in the background; a peer that stops reading has to be a bare socket
whose kernel buffers really fill, so the server's sends really block.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.http11 import Response
from websockets.uri import parse_uri

SMALL_WINDOW = 4096  # bytes: the receive buffer (so the TCP window) of a peer that stops reading
SEND_TIMEOUT_S = 20.0


def stalled_socket(base: str, window: int = SMALL_WINDOW) -> socket.socket:
    """A TCP connection to the server whose receive buffer is `window` bytes (set before connecting, so the
    window advertised in the handshake is small too)."""
    url = urlsplit(base)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
    sock.connect((url.hostname, url.port))
    return sock


class RawWebSocket:
    """A WebSocket client that reads from its socket only inside `events()` / `drain()`."""

    def __init__(self, base: str, path: str = "/v1/realtime", window: int = SMALL_WINDOW) -> None:
        self.sock = stalled_socket(base, window)
        self.ports = (self.sock.getsockname()[1], self.sock.getpeername()[1])  # (ours, the server's)
        self.protocol = ClientProtocol(parse_uri(base.replace("http://", "ws://") + path), max_size=None)
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self.received: list[Frame | Response] = []
        self.bytes_read = 0
        deadline = time.monotonic() + 10
        while not any(isinstance(e, Response) for e in self.received):  # the handshake's answer
            self._read_once(deadline)
        if self.received[0].status_code != 101:
            raise RuntimeError(f"handshake refused: {self.received[0].status_code}")

    def send(self, event: dict | str) -> None:
        """Send one text frame (blocks only if the server stops reading, which it must not)."""
        text = event if isinstance(event, str) else json.dumps(event)
        self.protocol.send_text(text.encode("utf-8"))
        self._flush()

    def texts(self) -> list[dict]:
        """The JSON events read so far."""
        return [json.loads(f.data) for f in self.received if isinstance(f, Frame) and f.opcode.name == "TEXT"]

    def until(self, kind: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            events = self.texts()
            for event in events[seen:]:
                if event["type"] == kind:
                    return event
            seen = len(events)
            self._read_once(deadline)

    def drain(self, timeout: float) -> bool:
        """Read everything until the server closes the connection: True when it did within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self._read_once(deadline):
                    return True
        except TimeoutError:
            return False
        except ConnectionError:  # reset: closed just the same
            return True

    def close(self) -> None:
        self.sock.close()

    def _read_once(self, deadline: float) -> bool:
        """One recv into the protocol; False at end of stream."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("the server sent nothing before the deadline") from None
        self.bytes_read += len(data)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self.received.extend(self.protocol.events_received())
        self._flush()  # pongs and close answers
        return bool(data)

    def _flush(self) -> None:
        """Send what the protocol has queued; a server that stops reading us raises TimeoutError."""
        self.sock.settimeout(SEND_TIMEOUT_S)
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.sock.sendall(chunk)


_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}


def server_side_state(ports: tuple[int, int]) -> str | None:
    """The state of the server's end of a peer's TCP connection (`RawWebSocket.ports`), as the kernel has it
    (/proc/net/tcp): 'ESTABLISHED' while the server holds it open, None once the server's socket is gone."""
    local_port, server_port = ports
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == local_port:
                return _TCP_STATES.get(state, state)
    return None
