"""Loading: tokenizer + models through AutoTokenizer / AutoModelForCausalLM, and the
checks that must fail before any window runs (SPEC §3): one vocabulary, enough
output rows, enough context, remote code only when asked for.

Which space (SPEC §7): `load_session` compares every model's vocabulary with the
shared tokenizer's (the load's `tokenizer`, else the first model's) before any weights
load. Token space needs them equal (else "tokenizer_mismatch"); byte space reads each
model with its OWN tokenizer (a model directory without tokenizer files reads with the
shared one), maps its tokens to bytes (token_bytes) and refuses, naming the model, a
tokenizer that byte space cannot use; `auto` is tokens when every vocabulary agrees,
bytes otherwise.

Local directories and Hub ids both go through from_pretrained, so the standard
Hugging Face cache (HF_HOME, HF_HUB_OFFLINE, ...) is honoured by the library itself.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from packaging import version

from .protocol import RequestError

# transformers ≥ 4.56 renamed from_pretrained's torch_dtype to dtype
_DTYPE_KWARG = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# files one of which a directory with a tokenizer has (AutoTokenizer on a directory
# without any of them quietly builds an empty tokenizer in transformers 5)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model",
                    "spiece.model", "vocab.txt", "sentencepiece.bpe.model")


@dataclass
class ModelSpec:
    ref: str
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"      # auto | float32 | float16 | bfloat16
    device: str = "auto"     # auto | cpu | cuda | cuda:N | mps
    device_map: str | None = None                  # auto | balanced | sequential: shard (accelerate)
    max_memory: dict[str, int | str] | None = None  # per GPU index / "cpu": the budget of a sharded load

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelSpec":
        return ModelSpec(ref=d["ref"], revision=d.get("revision"), trust_remote_code=bool(d.get("trust_remote_code", False)),
                         dtype=d.get("dtype") or "auto", device=d.get("device") or "auto",
                         device_map=d.get("device_map"), max_memory=d.get("max_memory"))

    def hub_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision is not None:
            kw["revision"] = self.revision
        return kw


@dataclass
class LoadedModel:
    ref: str
    model: Any                      # a transformers PreTrainedModel, eval mode
    device: torch.device
    dtype: torch.dtype
    vocab_size: int                 # rows of the output layer
    max_positions: int | None
    parameters: int
    head_path: str = "scored"       # "scored" | "full" (logits post-processed after the head)
    tokenizer_ref: str = ""         # the tokenizer it reads with (token space: the shared one)
    # sharded (accelerate's device_map): where its parts lie, in order ("cuda:0", "cuda:1",
    # "cpu", "disk"; parts on "cpu"/"disk" beside a GPU run on the first GPU), and where its
    # output layer runs; None / self.device when it lies on one device
    devices: list[str] | None = None
    head_device: torch.device | None = None
    _body: Any = field(default=None, repr=False)

    @property
    def sharded(self) -> bool:
        return self.devices is not None

    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        # sharded: accelerate's hooks move the activations from part to part; the result
        # lies where the body's last part ran
        out = self._body(input_ids=input_ids.to(self.device), use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]   # [B, L, H]

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head_device is not None:
            hidden = hidden.to(self.head_device)                                        # a sharded model's head
        return self.model.get_output_embeddings()(hidden)                               # [P, V] model dtype

    @torch.inference_mode()
    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits  # [B, L, V]

    def describe(self) -> dict[str, Any]:
        """The protocol's LoadedModel."""
        return {"ref": self.ref, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "parameters": self.parameters, "vocab_size": self.vocab_size,
                "max_positions": self.max_positions, "head_path": self.head_path,
                "tokenizer": self.tokenizer_ref, **({"devices": list(self.devices)} if self.devices else {})}

    def where(self) -> str:
        """Its device, in words (the loaded status line)."""
        if not self.devices:
            return str(self.device)
        return (f"sharded over {', '.join(self.devices)} (input on {self.device}, head on "
                f"{self.head_device or self.device})")


@dataclass
class ByteReader:
    """What byte space keeps of one model's tokenizer (SPEC §7)."""
    tokenizer: Any
    table: list[bytes | None]      # token_bytes(tokenizer, output rows)
    start_id: int                  # s_m: BOS, else EOS
    dummy_prefix: bool             # whether it may write ' ' before a text


@dataclass
class Session:
    """What a load gives the server: the resolved space and why, the models, and the
    shared tokenizer (token space) or each model's own reader (byte space)."""
    space: str                     # "tokens" | "bytes"
    space_reason: str
    tokenizer: Any                 # token space: the shared one; byte space: the first model's
    tokenizer_ref: str
    models: list[LoadedModel]
    readers: list[ByteReader] | None = None   # byte space: one per model


# ----------------------------------------------------------------------------- small helpers

def _is_local(ref: str) -> bool:
    # Hub ids are "name" or "org/name"; anything path-like is a local directory
    return (os.path.isdir(ref) or os.path.isabs(ref) or ref.startswith((".", "~"))
            or ref.count("/") > 1 or os.sep != "/" and os.sep in ref)


def _where(ref: str) -> str:
    if _is_local(ref):
        return f"looked for the local directory {os.path.abspath(os.path.expanduser(ref))}"
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return f"looked in the Hugging Face cache {constants.HF_HUB_CACHE} (offline mode: HF_HUB_OFFLINE=1)"
    return f"looked in the Hugging Face cache {constants.HF_HUB_CACHE} and on the Hub"


def _load_error(e: Exception, what: str, ref: str) -> RequestError:
    text = str(e)
    if "trust_remote_code" in text:
        return RequestError("remote_code", f"{what} {ref} needs custom code from its repository; "
                                        "set trust_remote_code: true for it if you trust that code")
    if _is_local(ref) and not os.path.isdir(os.path.expanduser(ref)):
        return RequestError("not_found", f"{what} {ref} not found: {_where(ref)}")
    if isinstance(e, OSError):
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return RequestError("not_found", f"{what} {ref} not found: {_where(ref)} ({first})")
    return RequestError("bad_request", f"cannot load {what} {ref}: {type(e).__name__}: {text}")


def _pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RequestError("bad_request", f"device {requested} asked for, but this torch ({torch.__version__}) "
                                       "sees no CUDA device")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise RequestError("bad_request", "device mps asked for, but MPS is not available")
    return torch.device(requested)


def _pick_dtype(requested: str, device: torch.device, config: Any) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type != "cuda":
        return torch.float32      # CPU (and MPS): 16-bit matmuls are slow or inexact there
    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(saved, str):
        saved = _DTYPES.get(saved)
    bf16_ok = torch.cuda.is_bf16_supported()
    if saved == torch.float16 or (saved == torch.bfloat16 and not bf16_ok):
        return torch.float16
    return torch.bfloat16 if bf16_ok else torch.float16


def _max_positions(config: Any) -> int | None:
    for c in (config, getattr(config, "text_config", None)):
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(c, name, None) if c is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _vocab_difference(a: dict[str, int], b: dict[str, int]) -> str | None:
    """None when the vocabularies are equal, else a short description of how they differ."""
    if a == b:
        return None
    by_id_a = {i: t for t, i in a.items()}
    by_id_b = {i: t for t, i in b.items()}
    first = min(i for i in set(by_id_a) | set(by_id_b) if by_id_a.get(i) != by_id_b.get(i))
    return (f"{len(a)} vs {len(b)} tokens; first difference at id {first}: "
            f"{by_id_a.get(first)!r} vs {by_id_b.get(first)!r}")


def _load_tokenizer(ref: str, kw: dict[str, Any], what: str) -> Any | None:
    """A tokenizer, or None when the local directory has no tokenizer files."""
    from transformers import AutoTokenizer
    if _is_local(ref) and os.path.isdir(os.path.expanduser(ref)) \
            and not any(os.path.isfile(os.path.join(os.path.expanduser(ref), f)) for f in _TOKENIZER_FILES):
        return None
    try:
        tok = AutoTokenizer.from_pretrained(ref, **kw)
    except Exception as e:  # noqa: BLE001 - mapped to a RequestError code
        raise _load_error(e, what, ref) from e
    return tok if len(tok.get_vocab()) > 1 else None


# ----------------------------------------------------------------------------- placement: one device, or sharded

# accelerate's strategies for a device_map (transformers' "auto" is "balanced")
DEVICE_MAPS = ("auto", "balanced", "sequential")
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)\s*$", re.IGNORECASE)


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a size such as "20GiB", "500MB", "1.5 GB" (KB/MB/GB/TB:
    powers of 1000; KiB/MiB/GiB/TiB: powers of 1024). ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"a size must be an integer of bytes or a string such as 20GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must be >= 0 bytes, got {value}")
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"a size must be an integer of bytes or a string such as 20GiB or 500MB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Placement:
    """Where a model's weights go (plan_placement): one device (sharded False: _pick_device
    resolves spec.device), or split by accelerate over `devices` (GPU indices, "cpu"; what
    fits nowhere goes to disk) with the per-device budgets the config gave (bytes; a device
    without one gets what accelerate finds free)."""
    sharded: bool = False
    device_map: str | None = None              # auto | balanced | sequential
    devices: tuple[int | str, ...] = ()        # accelerate's max_memory keys: GPU indices, then "cpu"
    max_memory: dict[int | str, int] = field(default_factory=dict)
    implicit: bool = False                     # sharded only because device is auto on several GPUs


def plan_placement(ref: str, device: str, cuda_count: int, device_map: str | None,
                   max_memory: dict[str, int | str] | None) -> Placement:
    """The decision, as a pure function of the request and the CUDA device count (tested
    with counts 0, 1, 2 on any machine). A model is sharded when its spec asks
    (device_map, or max_memory) or when device is auto and there are several GPUs; the
    devices it may use: device cpu → the CPU; cuda:N → GPU N and the CPU; cuda or auto → every
    GPU and the CPU (what fits on none goes to disk, in a temporary offload folder)."""
    def bad(why: str) -> RequestError:
        return RequestError("bad_request", f"model {ref}: {why}")

    if device_map is not None and device_map not in DEVICE_MAPS:
        raise bad(f"device_map must be one of {', '.join(DEVICE_MAPS)}, got {device_map!r}")
    budgets: dict[int | str, int] = {}
    for key, value in (max_memory or {}).items():
        if key == "cpu":
            k: int | str = "cpu"
        elif isinstance(key, str) and key.isdigit():
            k = int(key)
        else:
            raise bad(f"max_memory keys are GPU indices (\"0\", \"1\", ...) or \"cpu\", got {key!r}")
        try:
            budgets[k] = parse_size(value)
        except ValueError as e:
            raise bad(f"max_memory.{key}: {e}") from None
    asked = device_map is not None or max_memory is not None
    implicit = not asked and device == "auto" and cuda_count >= 2
    if not (asked or implicit):
        return Placement()
    if device == "mps":
        raise bad("sharding (device_map / max_memory) is for CUDA devices and the CPU, not mps")
    if device == "cpu":
        gpus: list[int] = []
    elif device.startswith("cuda:"):
        gpus = [int(device[5:])]
    else:
        gpus = list(range(cuda_count))
    if device.startswith("cuda") and cuda_count == 0:
        raise bad(f"device {device} asked for, but this torch ({torch.__version__}) sees no CUDA device")
    if any(g >= cuda_count for g in gpus):
        raise bad(f"device {device} asked for, but this torch sees {cuda_count} CUDA device(s)")
    stray = [k for k in budgets if k != "cpu" and k not in gpus]
    if stray:
        allowed = f"GPUs {', '.join(map(str, gpus))}" if gpus else "no GPU"
        raise bad(f"max_memory names GPU {stray[0]}, but device {device} on this machine "
                  f"({cuda_count} CUDA device(s)) gives the model {allowed}")
    return Placement(True, device_map or "auto", (*gpus, "cpu"), budgets, implicit)


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _has_accelerate() -> bool:
    """accelerate is imported only when a model is sharded (a worker without it runs the rest)."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def _budgets(p: Placement) -> dict[int | str, int]:
    """accelerate's max_memory: the config's budgets, and for every other device of the
    placement what accelerate finds free (devices left out get nothing)."""
    from accelerate.utils import get_max_memory
    free = get_max_memory()
    return {d: p.max_memory[d] if d in p.max_memory else int(free.get(d, 0)) for d in p.devices}


_OFFLOAD_DIRS: list[str] = []


def _offload_folder(ref: str) -> str:
    """A temporary folder for the layers that fit on no device (removed when the worker exits)."""
    import atexit
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="kotara-offload-")
    if not _OFFLOAD_DIRS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _OFFLOAD_DIRS])
    _OFFLOAD_DIRS.append(path)
    return path


def _shard_devices(model: Any) -> tuple[torch.device, torch.device, list[str]]:
    """A sharded model's (input device, head device, the devices its parts lie on, in
    order). From accelerate's hf_device_map: a part on a GPU runs there; a part on "cpu" or
    "disk" runs on the first GPU of the map (accelerate streams its weights in), or on the
    CPU when the map has no GPU."""
    dmap: dict[str, Any] = getattr(model, "hf_device_map", None) or {"": "cpu"}

    def named(d: Any) -> str:
        return f"cuda:{d}" if isinstance(d, int) else str(d)

    placed = list(dict.fromkeys(named(d) for d in dmap.values()))
    gpus = [d for d in placed if d.startswith("cuda")]
    main = torch.device(gpus[0] if gpus else "cpu")

    def runs_on(module: Any) -> torch.device:
        name = next((n for n, mod in model.named_modules() if mod is module), "")
        keys = [k for k in dmap if k == "" or name == k or name.startswith(k + ".")]
        d = named(dmap[max(keys, key=len)]) if keys else "cpu"
        return torch.device(d) if d.startswith("cuda") else main

    head = model.get_output_embeddings()
    order = {"cuda": 0, "cpu": 1, "disk": 2}
    placed.sort(key=lambda d: (order.get(d.split(":")[0], 3), int(d.split(":")[1]) if ":" in d else 0))
    return runs_on(model.get_input_embeddings()), runs_on(head) if head is not None else main, placed


# ----------------------------------------------------------------------------- the scored-head check

def _check_head(m: LoadedModel) -> str:
    """'scored' when head(hidden) reproduces the model's own logits on a few tokens;
    'full' when the architecture post-processes logits (softcapping, logit_scale, ...)
    or the body cannot be called on its own."""
    ids = (torch.arange(8) % m.vocab_size).unsqueeze(0)                # [1, 8]
    try:
        full = m.full_logits(ids)[0].float()                           # [8, V]
        scored = m.head(m.hidden(ids)[0]).float()                      # [8, V]
    except Exception:  # noqa: BLE001 - any failure of the split path: use the plain forward
        return "full"
    tol = 1e-4 if m.dtype == torch.float32 else 2e-2
    scale = 1.0 + float(full.abs().max())
    same = full.shape == scored.shape and torch.allclose(full, scored, rtol=tol, atol=tol * scale)
    return "scored" if same else "full"


# ----------------------------------------------------------------------------- load_models

# Byte space reads each model as a byte LM; a tokenizer must reproduce this before any
# weights load (a lowercasing or otherwise rewriting normalizer fails it): what every
# text has — capitals, digits, punctuation, spaces, a newline. The text itself is checked
# window by window before the pass (byte_eval.check_windows).
BYTE_PROBE = "The Quick Brown Fox, 1234!\nA  dog (said she)."
SPACES = ("tokens", "bytes", "auto")


def load_models(specs: list[dict[str, Any]], tokenizer_ref: str | None, max_length: int | None,
                bos_per_window: bool, status: Callable[[str], None]) -> tuple[Any, list[LoadedModel]]:
    """Token space: (the shared tokenizer, the models); "tokenizer_mismatch" unless every
    vocabulary agrees."""
    session = load_session(specs, tokenizer_ref, max_length, bos_per_window, status, space="tokens")
    return session.tokenizer, session.models


def load_session(specs: list[dict[str, Any]], tokenizer_ref: str | None, max_length: int | None,
                 bos_per_window: bool, status: Callable[[str], None], space: str = "tokens") -> Session:
    """The models of a load request, in the space it asks for (tokens | bytes | auto).

    max_length counts tokens in token space (checked against every model's context, with
    the BOS when bos_per_window); in byte space it counts bytes, whose tokenization is only
    known per window, so the context is checked per window (byte_eval.check_windows)."""
    if space not in SPACES:
        raise RequestError("bad_request", f"space must be one of {', '.join(SPACES)}, got {space!r}")
    model_specs = [ModelSpec.from_dict(s) for s in specs]
    if not model_specs:
        raise RequestError("bad_request", "no models to load")
    # the shared tokenizer: tokenizer_ref or the first model's; remote code only if that model asked for it
    tok_ref = tokenizer_ref or model_specs[0].ref
    owner = next((s for s in model_specs if s.ref == tok_ref), None)
    tokenizer = _main_tokenizer(tok_ref, owner, status)
    shared_ref = getattr(tokenizer, "name_or_path", "") or tok_ref

    # every model's own tokenizer (None: it has none, and reads with the shared one), compared
    # with the shared vocabulary before any weights load: that comparison decides the space
    own: list[Any] = []
    configs: list[Any] = []
    mismatch: tuple[ModelSpec, str] | None = None
    vocab = tokenizer.get_vocab()
    for spec in model_specs:
        configs.append(_load_config(spec, spec.hub_kwargs()))   # a missing model or remote code: said first
        if spec.ref == tok_ref and spec.revision == (owner.revision if owner else None):
            own.append(tokenizer)
            continue
        mine = _load_tokenizer(spec.ref, spec.hub_kwargs(), "tokenizer of model")
        own.append(mine)
        diff = _vocab_difference(mine.get_vocab(), vocab) if mine is not None else None
        if diff is not None and mismatch is None:
            mismatch = (spec, diff)
    if space == "tokens" and mismatch is not None:
        spec, diff = mismatch
        raise RequestError("tokenizer_mismatch", f"model {spec.ref} has a different vocabulary from the "
                                              f"tokenizer {tok_ref}: {diff}")
    if space == "auto":
        space = "bytes" if mismatch is not None else "tokens"
        reason = f"the vocabularies of {tok_ref} and {mismatch[0].ref} differ" if mismatch is not None \
            else "every vocabulary agrees"
    else:
        reason = "asked for"
    status(f"fusing in {space} space ({reason})")

    models: list[LoadedModel] = []
    readers: list[ByteReader] = []
    n_vocab = len(tokenizer)
    for i, spec in enumerate(model_specs):
        kw = spec.hub_kwargs()
        status(f"loading model {i + 1}/{len(model_specs)}: {spec.ref}")
        config = configs[i]
        if space == "tokens":
            max_positions = _check_context(spec, config, max_length, bos_per_window)
            loaded = _load_model(spec, config, kw, n_vocab, tok_ref, max_positions, status)
            loaded.tokenizer_ref = shared_ref
        else:
            mine = own[i] if own[i] is not None else tokenizer
            mine_ref = (getattr(mine, "name_or_path", "") or spec.ref) if own[i] is not None else shared_ref
            loaded = _load_model(spec, config, kw, len(mine), mine_ref, _max_positions(config), status)
            loaded.tokenizer_ref = mine_ref
            readers.append(_byte_reader(spec, mine, mine_ref, loaded.vocab_size))
        status(f"loaded {spec.ref}: {loaded.parameters:,} parameters, {loaded.where()}, "
               f"{loaded.describe()['dtype']}, head path {loaded.head_path}")
        models.append(loaded)
    if space == "bytes":
        return Session("bytes", reason, own[0] if own[0] is not None else tokenizer,
                       models[0].tokenizer_ref, models, readers)
    return Session("tokens", reason, tokenizer, shared_ref, models)


def _byte_reader(spec: ModelSpec, tokenizer: Any, tok_ref: str, rows: int) -> ByteReader:
    """The model's tokenizer as byte space needs it, or "tokenizer_mismatch" naming the
    model and the reason (SPEC §7: before any window runs)."""
    from .token_bytes import ByteSpaceError, canonical_ids, has_dummy_prefix, start_token, token_bytes
    try:
        table = token_bytes(tokenizer, rows)
        start = start_token(tokenizer)
        dummy = has_dummy_prefix(tokenizer)
        # an unknown token here says nothing about the user's text (checked per window); a
        # normalizer that rewrites this text (lowercasing, ...) would rewrite any text
        if tokenizer.unk_token_id is None or tokenizer.unk_token_id not in \
                tokenizer(BYTE_PROBE, add_special_tokens=False)["input_ids"]:
            canonical_ids(tokenizer, table, BYTE_PROBE, dummy_prefix=dummy)
    except ByteSpaceError as e:
        raise RequestError("tokenizer_mismatch", f"model {spec.ref} cannot be read in byte space: its tokenizer "
                                              f"{tok_ref}: {e}") from None
    return ByteReader(tokenizer, table, start, dummy)


def _main_tokenizer(tok_ref: str, owner: ModelSpec | None, status: Callable[[str], None]) -> Any:
    tok_kw = owner.hub_kwargs() if owner else {"trust_remote_code": False}
    status(f"loading tokenizer {tok_ref}")
    tokenizer = _load_tokenizer(tok_ref, tok_kw, "tokenizer")
    if tokenizer is None:
        raise RequestError("not_found", f"tokenizer {tok_ref} not found: the directory has no tokenizer files "
                                     f"({', '.join(_TOKENIZER_FILES[:4])}, ...); set `tokenizer:`")
    return tokenizer


def _load_config(spec: ModelSpec, kw: dict[str, Any]) -> Any:
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(spec.ref, **kw)
    except Exception as e:  # noqa: BLE001
        raise _load_error(e, "model", spec.ref) from e


def _check_context(spec: ModelSpec, config: Any, max_length: int | None, bos_per_window: bool) -> int | None:
    """The model's context length (None: unknown), which must hold max_length (+ the BOS)."""
    max_positions = _max_positions(config)
    need = None if max_length is None else max_length + (1 if bos_per_window else 0)
    if need is not None and max_positions is not None and need > max_positions:
        raise RequestError("context", f"model {spec.ref} has a context of {max_positions} positions; "
                                   f"max_length {max_length}{' + 1 BOS' if bos_per_window else ''} "
                                   f"needs {need}")
    return max_positions


def _load_model(spec: ModelSpec, config: Any, kw: dict[str, Any], n_vocab: int, tok_ref: str,
                max_positions: int | None, status: Callable[[str], None] = lambda _m: None) -> LoadedModel:
    """The weights on their device in eval mode, with enough output rows, and the head path."""
    from transformers import AutoModelForCausalLM
    placement = plan_placement(spec.ref, spec.device, _cuda_count(), spec.device_map, spec.max_memory)
    shard_kw: dict[str, Any] = {}
    if placement.sharded and not _has_accelerate():
        if placement.implicit:      # device auto on several GPUs: what a worker without accelerate did before
            status(f"warning: model {spec.ref} loads on cuda:0 alone: sharding it over the {_cuda_count()} GPUs "
                   "needs the accelerate package (pip install accelerate, or kotara setup)")
            placement = Placement()
        else:
            raise RequestError("bad_request", f"model {spec.ref}: sharding (device_map / max_memory) needs the "
                                           "accelerate package, which this Python lacks: pip install accelerate "
                                           "(or run kotara setup)")
    if placement.sharded:
        device = torch.device("cuda" if any(isinstance(d, int) for d in placement.devices) else "cpu")
        shard_kw = {"device_map": placement.device_map, "max_memory": _budgets(placement),
                    "offload_folder": _offload_folder(spec.ref)}
    else:
        device = _pick_device(spec.device)
    dtype = _pick_dtype(spec.dtype, device, config)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.ref, config=config, **{_DTYPE_KWARG: dtype}, **shard_kw, **kw)
    except Exception as e:  # noqa: BLE001
        raise _load_error(e, "model", spec.ref) from e
    devices = head_device = None
    if placement.sharded:
        device, head_device, devices = _shard_devices(model)
        model.eval().requires_grad_(False)
    else:
        model.to(device).eval().requires_grad_(False)

    head = model.get_output_embeddings()
    rows = head.weight.shape[0] if head is not None else int(config.vocab_size)
    if rows < n_vocab:
        raise RequestError("tokenizer_mismatch", f"model {spec.ref} has {rows} output rows but the tokenizer "
                                              f"{tok_ref} has {n_vocab} tokens")
    body = model.base_model if model.base_model is not model else None
    loaded = LoadedModel(ref=spec.ref, model=model, device=device, dtype=dtype, vocab_size=rows,
                         max_positions=max_positions, parameters=sum(p.numel() for p in model.parameters()),
                         devices=devices, head_device=head_device, _body=body)
    loaded.head_path = "full" if head is None or body is None else _check_head(loaded)
    return loaded
