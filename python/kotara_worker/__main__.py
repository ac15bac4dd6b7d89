"""The worker process: `python -m kotara_worker --endpoint ENDPOINT`.

(`--listen tcp://HOST:PORT --key-file F` is the other mode, a worker that a controller
connects to: listen.py.)

It reads the session key from the first line of stdin (never the command line),
connects a DEALER socket to the controller's ROUTER, says hello, and serves
load / evaluate / cancel / shutdown until told to stop. It exits by itself when
the controller goes away (stdin closes, or the parent process changes).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback

MISSING_REQUIREMENTS = 3  # exit code: a requirement is missing or cannot be imported

def log(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is a pipe to the controller, which may be gone


def watch_parent(parent_pid: int) -> None:
    """Exit when the controller is gone: stdin EOF, or we were re-parented."""
    fd = sys.stdin.fileno()

    def stdin_eof() -> None:
        # os.read, not sys.stdin.buffer.read: a daemon thread blocked inside the
        # buffered reader holds its lock, and an interpreter that exits while it does
        # aborts with "Fatal Python error: _enter_buffered_busy".
        try:
            while os.read(fd, 4096):
                pass
        except Exception:  # noqa: BLE001
            pass
        log("kotara-worker: controller closed stdin; exiting")
        os._exit(0)

    def parent_pid_changed() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                log("kotara-worker: controller process is gone; exiting")
                os._exit(0)

    threading.Thread(target=stdin_eof, daemon=True).start()
    threading.Thread(target=parent_pid_changed, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotara_worker")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--endpoint", help="the controller's socket (the controller starts this process)")
    mode.add_argument("--listen", help="tcp://HOST:PORT: listen for a controller (with --key-file)")
    parser.add_argument("--key-file", help="--listen: the key file from `kotara keygen`")
    parser.add_argument("--heartbeat", type=float, default=float(os.environ.get("KOTARA_HEARTBEAT_S", "1.0")))
    args = parser.parse_args(argv)
    if args.listen is not None:
        from .listen import main as listen

        return listen(args)

    # A Python without Kotara's requirements: one line (the controller turns it into
    # "run `kotara setup`"), exit 3, before any thread starts.
    from .probe import missing_modules

    missing = missing_modules()
    if missing:
        log(f"kotara-worker: {sys.executable} lacks Kotara's requirements: missing {', '.join(missing)}")
        return MISSING_REQUIREMENTS

    # Ctrl-C in a terminal reaches the whole process group; the controller decides
    # what an interrupt means (cancel, checkpoint, shutdown), so the worker ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_pid = os.getppid()
    key_hex = sys.stdin.readline().strip()
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if len(key) < 16:
        log("kotara-worker: no session key on stdin (the worker is started by the kotara controller)")
        return 2
    watch_parent(parent_pid)

    try:
        import zmq

        from . import protocol
    except ImportError as e:  # installed but broken: still one line
        log(f"kotara-worker: {sys.executable} lacks Kotara's requirements: {type(e).__name__}: {e}")
        return MISSING_REQUIREMENTS

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(args.endpoint)
    channel = protocol.Channel(socket, key, log=log)

    def heartbeat() -> None:
        while True:
            time.sleep(args.heartbeat)
            channel.send({"type": "heartbeat"})

    threading.Thread(target=heartbeat, daemon=True).start()

    try:
        from .server import Server  # imports torch + transformers (seconds)
    except ImportError as e:
        log(f"kotara-worker: {sys.executable} lacks Kotara's requirements: {type(e).__name__}: {e}")
        socket.close(0)
        context.term()
        return MISSING_REQUIREMENTS

    server = Server(channel, log)
    try:
        server.run()
    finally:
        socket.close(0)
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
