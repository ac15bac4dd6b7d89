"""The worker in a Python that lacks (or cannot import) a requirement: one line on
stderr, exit 3, and no "Fatal Python error: _enter_buffered_busy" at interpreter
shutdown; and the probe `kotara setup` / `kotara doctor` read."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kotara_worker import probe

from conftest import PYTHON

REPO = PYTHON.parent
KEY = "00112233445566778899aabbccddeeff\n"


def run_worker(extra_path: Path | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (extra_path, PYTHON) if p)}
    # stdin stays open (the controller keeps it open): the watcher thread is blocked in a read at exit
    proc = subprocess.Popen([sys.executable, "-m", "kotara_worker", "--endpoint", "ipc:///nonexistent/w.sock"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdin and proc.stdout and proc.stderr
    proc.stdin.write(KEY)
    proc.stdin.flush()
    rc = proc.wait(timeout=60)  # not communicate(): that closes stdin first
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    return subprocess.CompletedProcess(proc.args, rc, out, err)


def test_a_module_that_fails_to_import_after_the_threads_started_exits_3_in_one_line(tmp_path: Path):
    # zmq is found (so the up-front check passes) but raises on import: the late path,
    # after the stdin watcher thread has started.
    (tmp_path / "zmq").mkdir()
    (tmp_path / "zmq" / "__init__.py").write_text("raise ImportError('libzmq.so.5: cannot open shared object file')\n")
    r = run_worker(tmp_path)
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"kotara-worker: {sys.executable} lacks Kotara's requirements: ImportError: libzmq.so.5: cannot open shared object file"]
    assert "Fatal Python error" not in r.stderr


def test_a_missing_module_is_named_before_anything_starts(tmp_path: Path):
    # msgpack hidden by a meta path finder, installed through sitecustomize
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'msgpack': raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hide())\n")
    r = run_worker(tmp_path)
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines() == [f"kotara-worker: {sys.executable} lacks Kotara's requirements: missing msgpack"]


def test_probe_reports_versions_and_requirements():
    r = subprocess.run([sys.executable, "-m", "kotara_worker.probe", "--requirements", str(REPO / "requirements.txt")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(PYTHON)}, check=True)
    p = json.loads(r.stdout.strip().splitlines()[-1])
    assert p["executable"] == sys.executable
    assert p["missing"] == []
    assert p["versions"]["torch"] is not None
    names = [q["name"] for q in p["requirements"]]
    assert names[:2] == ["torch", "transformers"] and "pyzmq" in names and "pytest" not in names
    assert all(q["satisfied"] for q in p["requirements"])


def test_requirement_versions_are_checked(tmp_path: Path):
    req = tmp_path / "r.txt"
    req.write_text("# a comment\ntorch>=999\nno-such-distribution-kotara>=1\nmsgpack>=1.0  # trailing\n")
    got = {q["name"]: q["satisfied"] for q in probe.check_requirements(str(req))}
    assert got == {"torch": False, "no-such-distribution-kotara": False, "msgpack": True}
