"""A network fault tool for the fault tests: a loopback TCP proxy in front of a real server that can refuse
connections, reset them, or accept and hold them (a peer that never answers). Not a fake of any service: bytes pass
through untouched while it is in "pass" mode."""

from __future__ import annotations

import socket
import struct
import threading
import time


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to `upstream` (host, port). Modes:
    pass: forward; refuse: the listening socket is closed (ECONNREFUSED); reset: accept and RST at once, and RST every
    open connection; hold: accept, read nothing, never answer; swallow: forward requests, drop every answer (the
    server did the work, the client never hears so)."""

    def __init__(self, upstream: tuple[str, int], port: int = 0):
        self.upstream = upstream
        self.mode = "pass"
        self.accepted = 0
        self.requests = 0  # client chunks that begin with an HTTP method: roughly, HTTP requests seen
        self.trips: list[tuple[bytes, str, float, threading.Event]] = []
        self.cuts: list[tuple[bytes, int]] = []
        self.trickles: list[tuple[bytes, int, float]] = []
        self._conns: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closed = False
        self._open_listener(port)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def _open_listener(self, port: int) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "refuse", "reset", "hold", "swallow"), mode
        with self._lock:
            previous, self.mode = self.mode, mode
            if mode in ("refuse", "reset"):
                for c in list(self._conns) + self._held:
                    _rst(c)
                self._conns.clear()
                self._held.clear()
            if mode == "refuse" and self._listener is not None:
                self._listener.close()
                self._listener = None
            if mode != "refuse" and previous == "refuse" and not self._closed:
                self._open_listener(self.port)

    def outage(self, mode: str, seconds: float) -> None:
        """`mode` now, back to pass after `seconds` (in the background)."""
        self.set_mode(mode)
        threading.Timer(seconds, lambda: self._closed or self.set_mode("pass")).start()

    def trip_on(self, marker: bytes, mode: str, seconds: float) -> threading.Event:
        """The first client request containing `marker` starts an outage of `seconds` in `mode` (the request itself
        is cut; mode "pass" only signals); the returned event is set when it trips."""
        fired = threading.Event()
        self.trips.append((marker, mode, seconds, fired))
        return fired

    def cut_answer(self, marker: bytes, keep: int) -> None:
        """On a connection whose request contains `marker`, pass the first `keep` bytes of the answer, then close both
        sides: a server dying mid-answer, at a byte the test chooses rather than whenever its process happens to die
        (a server that sends its answer in one burst would otherwise have sent it all)."""
        self.cuts.append((marker, keep))

    def trickle_answer(self, marker: bytes, piece: int, pause: float) -> None:
        """On a connection whose request contains `marker`, pass the answer `piece` bytes at a time, `pause` seconds
        apart: a slow link, so that a server sending its answer in one burst still reaches the client in parts."""
        self.trickles.append((marker, piece, pause))

    def close(self) -> None:
        self._closed = True
        self.set_mode("refuse")

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: "refuse"
            self.accepted += 1
            mode = self.mode
            if mode == "reset":
                _rst(client)
            elif mode == "hold":
                with self._lock:
                    self._held.append(client)
            else:
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
        except OSError:
            _rst(client)
            return
        with self._lock:
            self._conns |= {client, server}
        cut: dict[str, int] = {}  # "left": answer bytes still to pass on this connection, once a cut is armed
        threading.Thread(target=self._pipe, args=(server, client, False, cut), daemon=True).start()
        self._pipe(client, server, True, cut)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool, cut: dict[str, int]) -> None:
        try:
            while data := src.recv(65536):
                if from_client and data[:8].split(b" ", 1)[0] in (b"GET", b"PUT", b"POST", b"HEAD", b"DELETE"):
                    self.requests += 1
                    for marker, keep in self.cuts:
                        if marker in data:
                            cut.setdefault("left", keep)
                    for marker, piece, pause in self.trickles:
                        if marker in data:
                            cut["piece"], cut["pause_ms"] = piece, int(pause * 1000)
                    for marker, mode, seconds, fired in self.trips:
                        if not fired.is_set() and marker in data:
                            fired.set()
                            if mode != "pass":
                                self.outage(mode, seconds)
                                return
                if self.mode == "swallow" and not from_client:
                    continue
                if self.mode not in ("pass", "swallow"):
                    return
                if not from_client and "left" in cut:
                    data, cut["left"] = data[:cut["left"]], cut["left"] - len(data[:cut["left"]])
                    dst.sendall(data)
                    if cut["left"] <= 0:
                        return  # the finally closes both sides
                    continue
                if not from_client and "piece" in cut:
                    for at in range(0, len(data), cut["piece"]):
                        dst.sendall(data[at:at + cut["piece"]])
                        time.sleep(cut["pause_ms"] / 1000)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _rst(s) if self.mode in ("refuse", "reset") else _close(s)
            with self._lock:
                self._conns -= {src, dst}


def _rst(s: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST (connection reset), not an orderly FIN."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(s)


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass


def wait_until(fn, what: str, timeout: float, every: float = 0.2):
    """Poll fn until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
