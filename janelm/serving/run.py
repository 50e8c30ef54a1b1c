"""Running the app under uvicorn: the socket, the shutdown on SIGTERM, the exit code."""

from __future__ import annotations

import errno
import ipaddress
import signal
import socket
import threading
from typing import TYPE_CHECKING

from janelm.console import note
from janelm.errors import InputError, JaneLMError, first_line
if TYPE_CHECKING:
    from janelm.serving.batcher import Batcher
    from janelm.serving.decoder import DecoderProcess

SHUTDOWN_GRACE_S = 2.0  # after SIGTERM, rows still decoding this long are ended


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model is served (`--port 0`: a free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return socket.create_server(infos[0][4][:2], family=infos[0][0])
    except socket.gaierror as e:
        raise InputError(f"--host {host}: {e.strerror}: give an address such as 127.0.0.1") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise InputError(f"port {port} on {host} is in use: choose another --port (0 picks a free one)") from None
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --host or --port") from None


def serve(app, batcher: Batcher | DecoderProcess, sock: socket.socket, grace: float = SHUTDOWN_GRACE_S) -> int:
    """Serve until SIGTERM or Ctrl-C; then take no new requests, let rows finish for `grace` seconds,
    end the rest, and return 0. HTTP runs on a thread of its own and `batcher.run()` on this one,
    the main thread: a Batcher decodes there (PyTorch's CPU threads step at half speed when another
    thread drives them); a DecoderProcess (janelm serve's) hands out its process's events."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=int(grace) + 2)
    server = uvicorn.Server(config)  # off the main thread, uvicorn leaves the signals to us

    def stop(sig, frame) -> None:
        batcher.close(grace)  # new requests get 503 at once; streams in flight end within `grace`
        server.force_exit = server.should_exit  # a second signal: stop waiting for connections
        server.should_exit = True

    failed: list[str] = []

    def http() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # noqa: BLE001 - said in one line below, never a thread's traceback
            failed.append(first_line(e, 300))
        finally:
            batcher.close(0)  # the server stopped, on purpose or not: so does decoding

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    thread = threading.Thread(target=http, name="janelm-http")
    thread.start()
    host, port = sock.getsockname()[:2]
    note(f"janelm serve: http://{host if ':' not in host else f'[{host}]'}:{port}/ (the page), "
         f"OpenAI API at /v1; SIGTERM or Ctrl-C stops it")
    try:
        batcher.run()
    finally:
        batcher.close(0)
        server.should_exit = True
        thread.join(grace + 5)
    if failed:
        raise JaneLMError(f"the HTTP server stopped: {failed[0]}")
    return 0
