"""`castord web`: the dashboard served standalone by uvicorn.

castord/cli.py parses the options and maps errors to exit codes; this module
checks what it was given, opens the listening socket itself (so `--port 0` gets a
free port, and the log names the real address before the first request), and runs
uvicorn on it until SIGINT or SIGTERM.
"""

from __future__ import annotations

import signal
import socket
from typing import TYPE_CHECKING

from castor.logs import get_logger
from castor.webui.app import dashboard
from castor.webui.security import WebSetupError, check_bind, read_token_file

if TYPE_CHECKING:
    from castor.manager import Manager

log = get_logger("castor.webui")


def read_token(token_file: str | None) -> str | None:
    return None if token_file is None else read_token_file(token_file)


def listen(host: str, port: int, *, token: str | None) -> socket.socket:
    """A socket listening on host:port, after refusing a bind beyond this machine without a token."""
    check_bind(host, token)
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebSetupError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock: socket.socket | None = None
    try:
        sock = socket.socket(family, kind, proto)  # fails where IPv6 is disabled, for an IPv6 host
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve(manager: Manager, sock: socket.socket, *, read_only: bool, token: str | None) -> None:
    """Serve the dashboard on `sock` until SIGINT or SIGTERM, then close the Manager."""
    import uvicorn

    app = dashboard(manager, read_only=read_only, token=token)
    # log_config=None: uvicorn's loggers go to the root handler castord set up (JSON lines).
    config = uvicorn.Config(app, log_config=None, lifespan="off", server_header=False, proxy_headers=False)
    log.info("web.listening", url=url_of(sock), read_only=read_only, token=token is not None)
    # uvicorn catches SIGINT/SIGTERM, shuts down, restores the handlers it found and
    # raises the signal again: found handlers that ignore it let this function end
    # normally (Manager closed, exit status 0) instead of dying by the signal.
    previous = {signum: signal.signal(signum, _already_stopping) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
        manager.close()
        log.info("web.stopped")


def _already_stopping(signum: int, frame: object) -> None:
    return None
