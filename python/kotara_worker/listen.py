"""A worker that listens: `python -m kotara_worker --listen tcp://HOST:PORT --key-file F`.

Started by hand on another machine (`kotara worker --listen …`); a controller connects
to it (Worker.connect in src/worker.ts). The socket is a ROUTER and a CURVE server:
only a client holding the key file's client keypair completes the handshake (ZAP
checks its public key), and every message is still signed with the file's HMAC key,
as between a controller and its local worker.

One session at a time. A controller's DEALER connects with ZMQ_PROBE_ROUTER, so its
first message is an empty one: that tells the listener the new peer's routing
identity. A session is a fresh Channel bound to that identity (seq from 0), a fresh
Server (which says hello) and a heartbeat thread; it ends on the controller's
shutdown or when its connection goes away, and then the next controller may come.
Ctrl-C or SIGTERM stops the listener.
"""
from __future__ import annotations

import gc
import hmac
import json
import os
import re
import signal
import stat
import sys
import threading
import time
from pathlib import Path

from . import protocol

ENDPOINT = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[^:/\s\[\]]+):(\d{1,5})$")
Z85 = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
KEY_PAIRS = (("server_public", "server_secret"), ("client_public", "client_secret"))
# ZMTP heartbeats on the ROUTER: a controller whose machine vanished (no TCP FIN) is
# dropped after HEARTBEAT_TIMEOUT_MS; its next message then has nowhere to go.
HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 10000
ZAP_DOMAIN = "kotara"  # the socket's and the authenticator's: they must be the same


def log(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class KeyFileError(Exception):
    """A key file that cannot be used; the message is one `path: what` line."""


def read_key_file(path: str) -> tuple[dict, str | None]:
    """The key file `kotara keygen` writes (src/keys.ts), checked: (its fields, a warning
    when others than its owner may read it, or None)."""
    import zmq

    try:
        text = Path(path).read_bytes().decode("utf-8")
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file (make one with `kotara keygen {path}` and copy it to both machines)") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a kotara key file (not UTF-8 text)") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise KeyFileError(f"{path}: not a kotara key file (not JSON: {e})") from None
    if not isinstance(doc, dict) or doc.get("kotara_key") != 1:
        raise KeyFileError(f"{path}: kotara_key: must be 1 (this is not a key file from `kotara keygen`)")
    for pair in KEY_PAIRS:
        for field in pair:
            if not isinstance(doc.get(field), str) or not Z85.match(doc[field]):
                raise KeyFileError(f"{path}: {field}: must be a CURVE key in Z85 (40 characters)")
        public, secret = pair
        if zmq.curve_public(doc[secret].encode()) != doc[public].encode():
            raise KeyFileError(f"{path}: {public}: does not belong to {secret} (was the file edited?)")
    if not isinstance(doc.get("hmac"), str) or not re.fullmatch(r"[0-9a-f]{64}", doc["hmac"]):
        raise KeyFileError(f"{path}: hmac: must be 64 hexadecimal digits (32 bytes)")
    warning = None
    if os.name == "posix" and st.st_mode & 0o077:
        warning = (f"{path}: others than its owner may read it (mode {stat.S_IMODE(st.st_mode):o}); "
                   f"it holds secret keys: chmod 600 {path}")
    return doc, warning


class Stop(BaseException):
    """Ctrl-C or SIGTERM, raised in the main thread wherever it is. A BaseException, so
    that Server.dispatch's `except Exception` (which reports and keeps serving) lets it by."""


def on_signal(signum, frame) -> None:
    # One stop: the controller's node process forwards the signal a terminal also sent us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


class SessionChannel(protocol.Channel):
    """The Channel of one controller's session on the listener's ROUTER."""

    def __init__(self, socket, key: bytes, peer: bytes, name: str):
        super().__init__(socket, key, log=log, peer=peer)
        self.name = name
        self.gone = False
        self.strangers: set[bytes] = set()

    def send(self, message: dict) -> None:
        import zmq

        try:
            super().send(message)
        except zmq.ZMQError as e:
            # ROUTER_MANDATORY: the ROUTER knows no such peer any more: the controller's
            # connection closed (it exited, or the ZMTP heartbeat timed out).
            if e.errno != zmq.EHOSTUNREACH:
                raise
            self.gone = True

    def recv(self, timeout_ms: int) -> dict | None:
        if self.gone:
            # What the server does with a shutdown is what a vanished controller needs: stop
            # the request in flight (Server.stop_check reads this too) and end the loop. Never
            # on the wire: made here, after the peer is gone.
            return {"type": "shutdown", "seq": self.last_recv_seq + 1}
        return super().recv(timeout_ms)

    def stranger(self, frames: list[bytes]) -> None:
        if frames[0] not in self.strangers:  # once per peer: a client may retry for a long time
            self.strangers.add(frames[0])
            what = "a new controller's connection" if len(frames) == 2 and not frames[1] else "a message"
            log(f"kotara-worker: busy with the session of {self.name}; dropped {what} from peer {frames[0].hex()}")


def serve_session(socket, key: bytes, peer: bytes, name: str, heartbeat_s: float, Server) -> str:
    """One controller, from its hello to its shutdown or its going away; how it ended, in words."""
    channel = SessionChannel(socket, key, peer, name)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(heartbeat_s):
            channel.send({"type": "heartbeat"})

    beat = threading.Thread(target=heartbeat, daemon=True)
    server = None
    # the try covers the hello too: a Ctrl-C that lands between the hello and the loop
    # must still end with a bye
    try:
        server = Server(channel, log)  # says hello
        beat.start()
        server.run()
    except Stop:
        channel.send({"type": "bye"})  # the controller learns the worker was stopped, not that it vanished
        raise
    finally:
        stop.set()
        if beat.is_alive():
            beat.join()
        del server  # the loaded models
        gc.collect()
        free_device_memory()
    return "the controller went away" if channel.gone else "the controller shut it down"


def free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args) -> int:
    m = ENDPOINT.match(args.listen)
    if not m or not 0 < int(m.group(2)) < 65536:
        log(f"kotara-worker: --listen takes tcp://HOST:PORT (a listening worker is reached over TCP; "
            f"a local one is started by the controller itself), got {args.listen!r}")
        return 2
    if not args.key_file:
        log("kotara-worker: --listen needs --key-file FILE (made by `kotara keygen FILE`): a listening worker "
            "always requires the key, on any address, loopback included")
        return 2

    from .probe import missing_modules

    missing = missing_modules()
    if missing:
        log(f"kotara-worker: {sys.executable} lacks Kotara's requirements: missing {', '.join(missing)}")
        return 3
    try:
        keys, warning = read_key_file(args.key_file)
    except KeyFileError as e:
        log(f"kotara-worker: {e}")
        return 2
    if warning:
        log(f"kotara-worker: warning: {warning}")
    try:
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        from .server import Server  # imports torch + transformers (seconds)
    except ImportError as e:
        log(f"kotara-worker: {sys.executable} lacks Kotara's requirements: {type(e).__name__}: {e}")
        return 3

    class OnlyTheKeyFile:
        """ZAP: the one client key this listener accepts."""

        refused: set[bytes] = set()

        def callback(self, domain: str, client_public: bytes) -> bool:
            if hmac.compare_digest(client_public, keys["client_public"].encode()):
                return True
            if client_public not in self.refused:  # once per key: its client retries for as long as it runs
                self.refused.add(client_public)
                log(f"kotara-worker: refused a controller whose key is not the key file's (client key "
                    f"{client_public[:8].decode()}…): does it hold another key file?")
            return False

    context = zmq.Context()
    # ZAP runs before the socket binds: without a handler a CURVE server lets any client in.
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=OnlyTheKeyFile())
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished peer raises: SessionChannel.send
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.curve_server = True
    socket.curve_secretkey = keys["server_secret"].encode()
    socket.curve_publickey = keys["server_public"].encode()
    socket.zap_domain = ZAP_DOMAIN.encode()
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            socket.bind(args.listen)
        except zmq.ZMQError as e:
            log(f"kotara-worker: cannot listen on {args.listen}: {e}")
            return 2
        log(f"kotara-worker: listening on {args.listen} (CURVE, key file {args.key_file}); Ctrl-C stops")
        listen(socket, bytes.fromhex(keys["hmac"]), args.heartbeat, Server)
    except Stop as e:
        log(f"kotara-worker: stopped ({e})")
    finally:
        socket.close(linger=1000)  # a moment for the bye to the controller (serve_session) to leave
        auth.stop()
        context.term()
    return 0


def listen(socket, key: bytes, heartbeat_s: float, Server) -> None:
    """Wait for a controller's probe, serve its session, wait for the next one; forever."""
    sessions = 0
    dropped: set[bytes] = set()
    while True:
        if not socket.poll(200):
            continue
        frames = socket.recv_multipart(copy=False)
        peer = frames[0].bytes
        if len(frames) != 2 or frames[1].bytes:
            if peer not in dropped:  # the rest of an ended session, or a client without probe_router
                dropped.add(peer)
                log(f"kotara-worker: dropped a message from peer {peer.hex()}, which has no session "
                    "(a session starts with the controller's connection)")
            continue
        sessions += 1
        address = peer_address(frames[1])
        name = f"{address} (session {sessions}, peer {peer.hex()})"
        log(f"kotara-worker: session started: controller {name}")
        started = time.monotonic()
        how = "stopped"
        try:
            how = serve_session(socket, key, peer, name, heartbeat_s, Server)
        finally:
            log(f"kotara-worker: session ended: controller {name}: {how} after {time.monotonic() - started:.1f}s")


def peer_address(frame) -> str:
    """The controller's IP address, from the message's metadata (libzmq ≥ 4.1)."""
    try:
        return frame.get("Peer-Address")
    except Exception:  # noqa: BLE001 - only for the log line
        return "a controller"
