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

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ModelSpec":
        return ModelSpec(ref=d["ref"], revision=d.get("revision"), trust_remote_code=bool(d.get("trust_remote_code", False)),
                         dtype=d.get("dtype") or "auto", device=d.get("device") or "auto")

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
    _body: Any = field(default=None, repr=False)

    @torch.inference_mode()
    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self._body(input_ids=input_ids.to(self.device), use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]   # [B, L, H]

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)                               # [P, V] model dtype

    @torch.inference_mode()
    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits  # [B, L, V]

    def describe(self) -> dict[str, Any]:
        """The protocol's LoadedModel."""
        return {"ref": self.ref, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "parameters": self.parameters, "vocab_size": self.vocab_size,
                "max_positions": self.max_positions, "head_path": self.head_path,
                "tokenizer": self.tokenizer_ref}


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
            loaded = _load_model(spec, config, kw, n_vocab, tok_ref, max_positions)
            loaded.tokenizer_ref = shared_ref
        else:
            mine = own[i] if own[i] is not None else tokenizer
            mine_ref = (getattr(mine, "name_or_path", "") or spec.ref) if own[i] is not None else shared_ref
            loaded = _load_model(spec, config, kw, len(mine), mine_ref, _max_positions(config))
            loaded.tokenizer_ref = mine_ref
            readers.append(_byte_reader(spec, mine, mine_ref, loaded.vocab_size))
        status(f"loaded {spec.ref}: {loaded.parameters:,} parameters, {loaded.device}, "
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
                max_positions: int | None) -> LoadedModel:
    """The weights on their device in eval mode, with enough output rows, and the head path."""
    from transformers import AutoModelForCausalLM
    device = _pick_device(spec.device)
    dtype = _pick_dtype(spec.dtype, device, config)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.ref, config=config, **{_DTYPE_KWARG: dtype}, **kw)
    except Exception as e:  # noqa: BLE001
        raise _load_error(e, "model", spec.ref) from e
    model.to(device).eval().requires_grad_(False)

    head = model.get_output_embeddings()
    rows = head.weight.shape[0] if head is not None else int(config.vocab_size)
    if rows < n_vocab:
        raise RequestError("tokenizer_mismatch", f"model {spec.ref} has {rows} output rows but the tokenizer "
                                              f"{tok_ref} has {n_vocab} tokens")
    body = model.base_model if model.base_model is not model else None
    loaded = LoadedModel(ref=spec.ref, model=model, device=device, dtype=dtype, vocab_size=rows,
                         max_positions=max_positions, parameters=sum(p.numel() for p in model.parameters()),
                         _body=body)
    loaded.head_path = "full" if head is None or body is None else _check_head(loaded)
    return loaded
