"""What this Python has for Kotara's worker, as one JSON line on stdout.

    python -m kotara_worker.probe [--requirements FILE] [--imports]

Standard library only at import time, so it runs in any Python (a bare venv, the
system's python3): `kotara setup` uses it to decide what to install, `kotara
doctor` to report, and the worker (`missing_modules`) to refuse to start with one
clean line instead of a traceback when a requirement is not there.

Without --imports nothing heavy is imported (package metadata and module specs
only: milliseconds). With --imports the worker's imports are tried for real and
torch reports its build and devices.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import sysconfig

# What the worker imports: module name -> the distribution that provides it.
WORKER_MODULES = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "zmq": "pyzmq",
    "msgpack": "msgpack",
    "jsonschema": "jsonschema",
}


def missing_modules() -> list[str]:
    """Distributions whose module the worker imports but this Python cannot find."""
    missing = []
    for module, dist in WORKER_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(dist)
    return missing


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _packaging():
    """packaging.requirements.Requirement, from packaging or pip's vendored copy; None if neither."""
    for name in ("packaging.requirements", "pip._vendor.packaging.requirements"):
        try:
            return importlib.import_module(name).Requirement
        except Exception:  # noqa: BLE001
            continue
    return None


def check_requirements(path: str) -> list[dict]:
    """Each requirement line of `path`: its name, the installed version, and whether it satisfies the line."""
    Requirement = _packaging()
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            name, spec_ok = line, None
            if Requirement is not None:
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate():
                    continue
                name = req.name
                installed = _version(name)
                spec_ok = installed is not None and req.specifier.contains(installed, prereleases=True)
            else:  # no packaging anywhere: presence only
                for sep in "<>=!~;[ ":
                    name = name.split(sep, 1)[0]
                installed = _version(name)
                spec_ok = installed is not None
            out.append({"line": line, "name": name, "installed": installed, "satisfied": bool(spec_ok)})
    return out


def _externally_managed() -> bool:
    """PEP 668: a system Python whose packages belong to the OS package manager."""
    if sys.prefix != sys.base_prefix:
        return False
    stdlib = sysconfig.get_path("stdlib")
    return bool(stdlib) and os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED"))


def _try_imports() -> dict:
    """Import what the worker imports; torch's build and devices; the Hugging Face cache."""
    errors: dict[str, str] = {}
    for module in WORKER_MODULES:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any failure means the worker cannot start
            errors[WORKER_MODULES[module]] = f"{type(e).__name__}: {e}".splitlines()[0]
    torch_info = None
    if "torch" not in errors:
        import torch

        cuda = torch.cuda.is_available()
        torch_info = {
            "cuda_build": torch.version.cuda,
            "cuda_available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        }
    hf = None
    try:
        from huggingface_hub import constants

        hf = {"home": constants.HF_HOME, "hub_cache": constants.HF_HUB_CACHE, "offline": bool(constants.HF_HUB_OFFLINE)}
    except Exception:  # noqa: BLE001
        pass
    return {"import_errors": errors, "torch": torch_info, "hf": hf}


def probe(requirements: str | None = None, imports: bool = False) -> dict:
    result = {
        "executable": sys.executable,
        "version": "%d.%d.%d" % sys.version_info[:3],
        "prefix": sys.prefix,
        "in_venv": sys.prefix != sys.base_prefix,
        "externally_managed": _externally_managed(),
        "pip": _version("pip") if importlib.util.find_spec("pip") is not None else None,
        "versions": {dist: _version(dist) for dist in WORKER_MODULES.values()},
        "missing": missing_modules(),
    }
    if requirements:
        result["requirements"] = check_requirements(requirements)
    if imports:
        result.update(_try_imports())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kotara_worker.probe")
    parser.add_argument("--requirements", help="check this requirements file against what is installed")
    parser.add_argument("--imports", action="store_true", help="import the worker's modules for real (seconds)")
    args = parser.parse_args(argv)
    result = probe(args.requirements, args.imports)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
