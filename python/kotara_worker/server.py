"""Message handling: what the worker does with load / evaluate / generate / fit / cancel / shutdown.

One request at a time, in the main thread. While an evaluation runs, the loop in
evaluate.py asks `should_stop()` between batches, which reads any message that
arrived (a cancel, or a shutdown).
"""
from __future__ import annotations

import ctypes
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers

from . import __version__, byte_eval, evaluate as ev, fit as fitting, generate as gen, positions as pos, protocol
from . import datasets as kdatasets
from .fusion import check_settings
from .models import load_session
from .protocol import RequestError
from .windows import plan_byte_windows, plan_document_windows, plan_windows
from .windows import window_bytes as windows_bytes


@dataclass
class Prepared:
    """A request's text as windows (Server.token_windows, Server.prepared_windows); a pool's
    is kept for its next shares, under `key`."""
    windows: list
    positions: int                       # the stream's positions: tokens, or bytes
    seconds: float                       # reading and tokenizing it (reported by the first share only)
    token_ids: torch.Tensor | None = None
    window_bytes: list | None = None
    text: bytes | None = None            # byte space
    view: pos.View | None = None
    key: tuple | None = None

    def take_seconds(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _file_stamp(path: str) -> tuple:
    """A file's size and modification time (a text edited between two requests is read again)."""
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None, None


class Server:
    def __init__(self, channel: protocol.Channel, log):
        self.channel = channel
        self.log = log
        self.tokenizer = None
        self.models = []
        self.space = "tokens"
        self.byte_models: list[byte_eval.ByteModel] = []   # byte space: each model as a byte LM
        self.stopping = False
        self._prepared: Prepared | None = None              # a pool's text, between its shares
        self._share_oom: tuple | None = None                # (request id, its warning, its ForwardSize)
        self.channel.send({
            "type": "hello",
            "protocol_version": protocol.PROTOCOL_VERSION,
            "worker_version": __version__,
            "pid": os.getpid(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        })

    # -- the loop ---------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping:
            message = self.channel.recv(200)
            if message is not None:
                self.dispatch(message)

    def dispatch(self, message: dict) -> None:
        kind = message["type"]
        if kind == "shutdown":
            self.channel.send({"type": "bye"})
            self.stopping = True
            return
        if kind == "cancel":
            return  # nothing is running
        request_id = message.get("request_id")
        try:
            if kind == "load":
                self.load(message)
            elif kind == "evaluate":
                self.evaluate(message)
            elif kind == "generate":
                self.generate(message)
            elif kind == "fit":
                self.fit(message)
        except RequestError as e:
            self.error(request_id, e.code, e.message)
        except ev.NumericalError as e:
            self.error(request_id, "numerical", str(e))
        except ev.OutOfMemory as e:                # at 1 window per forward (evaluate.run_pass; byte space)
            self.error(request_id, "internal", str(e), traceback.format_exc())
        except torch.OutOfMemoryError as e:        # anywhere else (a load, a generation)
            first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
            self.error(request_id, "internal", f"out of memory during {kind}: {first}", traceback.format_exc())
        except (ev.Cancelled, gen.Interrupted, fitting.Interrupted):
            self.error(request_id, "cancelled", "cancelled by the controller")
        except Exception as e:  # noqa: BLE001 - report, keep serving
            self.error(request_id, "internal", f"{type(e).__name__}: {e}", traceback.format_exc())

    def error(self, request_id, code: str, message: str, detail: str | None = None) -> None:
        self.channel.send({"type": "error", "request_id": request_id, "code": code,
                           "message": message, "detail": detail})

    def status(self, message: str) -> None:
        self.channel.send({"type": "status", "message": message})

    def warn_once(self) -> Callable[[str], None]:
        """A request's warning callback (evaluate.run_pass's on_status): its first message only."""
        told = []

        def warn(message: str) -> None:
            if not told:
                told.append(message)
                self.status(f"warning: {message}")
        return warn

    # -- requests ---------------------------------------------------------------
    def load(self, message: dict) -> None:
        """The models, in the space the load asks for (SPEC §7; protocol v2: `space`, `bytes`).
        In byte space each model reads with its own tokenizer; `tokenizer` then only serves
        a model directory that has none. loaded.tokenizer is the shared tokenizer in token
        space, the first model's in byte space."""
        start = time.perf_counter()
        self.models, self.byte_models, self.tokenizer, self._prepared = [], [], None, None
        options = message.get("bytes") or {"beam": 8, "prune": 0.0}
        session = load_session(message["models"], message["tokenizer"], message["max_length"],
                               message["bos_per_window"], self.status, space=message.get("space", "auto"))
        if session.space == "bytes":
            try:
                self.byte_models = byte_eval.byte_models(session.models, session.readers, int(options["beam"]),
                                                         float(options["prune"]))
            except ValueError as e:          # beam < 1, prune outside [0, 1) (the schema refuses them first)
                raise RequestError("bad_request", f"bytes: {e}") from None
        self.tokenizer, self.models, self.space = session.tokenizer, session.models, session.space
        tok = self.tokenizer
        self.channel.send({
            "type": "loaded",
            "models": [m.describe() for m in self.models],
            "tokenizer": {"ref": session.tokenizer_ref, "vocab_size": len(tok), "bos_token_id": tok.bos_token_id},
            "space": session.space,
            "space_reason": session.space_reason,
            "seconds": time.perf_counter() - start,
        })

    def evaluate(self, message: dict) -> None:
        mode = message["dataset"].get("mode") or "stream"
        if self.space == "bytes" and self.models:
            if mode == "documents":
                raise RequestError("bad_request", "dataset.mode documents is for token space (lm-eval's rolling "
                                                  "windows count tokens); these models run in byte space")
            return self.evaluate_share(message) if message.get("share") else self.evaluate_bytes(message)
        if message.get("share") and mode == "documents":
            raise RequestError("bad_request", "a pool of workers scores dataset.mode stream; documents mode runs "
                                              "on one worker")
        if mode == "documents":
            return self.evaluate_documents(message)
        if message.get("share"):
            return self.evaluate_share(message)
        request_id = message["request_id"]
        data = message["dataset"]
        bos_id = self.check_request(message)  # before tokenizing: fail fast
        asked = self.positions_request(message)
        reset_peak_memory()  # the request's peak: tokenizing and the pass
        prep = self.token_windows(data, asked[1] if asked is not None else None)
        token_ids, windows, window_bytes, tokenize_seconds = prep.token_ids, prep.windows, prep.window_bytes, prep.seconds
        view = pos.Collector(prep.view, asked[0], len(self.models)) if prep.view is not None else None
        resume = self.resume_sums(message)
        if resume is not None:
            try:
                ev._starting_sums(resume, len(self.models), len(message["settings"]), len(windows))
            except ValueError as e:                        # resume sums that do not fit the request
                raise RequestError("bad_request", str(e)) from None
        tokens_total = len(token_ids)
        started = time.perf_counter()
        on_progress = self.progress_sender(request_id, len(windows), tokens_total, started, resume)

        should_stop = self.stop_check(request_id)
        oom = self.warn_once()
        try:
            if view is not None and resume is not None:
                # the view's windows that the checkpoint holds: scored again, for the view alone
                side = min(pos.windows_in_view(windows, view.n_view), resume.windows_done)
                chosen = [message["settings"][k] for k in view.select]
                if side:
                    try:
                        ev.run_pass(self.models, token_ids, windows[:side], chosen, message["batch_size"], bos_id,
                                    len(self.tokenizer), None, lambda _s: None, 10**9, should_stop,
                                    window_bytes=window_bytes[:side], positions=view.for_settings(range(len(chosen))),
                                    on_status=oom)
                    except ev.Cancelled:
                        raise ev.Cancelled(resume.copy()) from None
            # the settings were checked above, once for the whole request: run_pass trusts them
            sums = ev.run_pass(self.models, token_ids, windows, message["settings"], message["batch_size"], bos_id,
                               len(self.tokenizer), resume, on_progress, message["progress_every"],
                               should_stop, window_bytes=window_bytes, positions=view, on_status=oom)
        except ev.Cancelled as c:
            on_progress(c.sums)  # what was finished reaches the controller before the error
            raise
        self.send_result(request_id, "tokens", tokens_total, len(windows), sums, None, started, tokenize_seconds,
                         view_field=self.positions_out(asked, view))

    def byte_windows(self, data: dict) -> tuple[bytes, list, float]:
        """A byte-space request's text, its windows of bytes, and the seconds reading and
        checking them took (the request's peak starts here): every refusal of check_windows
        before any window runs, then the tokenizers' freed heap handed back (it grows with
        the text), as in token space. Shared by evaluate and fit."""
        reset_peak_memory()
        started = time.perf_counter()
        text = self.read_text(data["path"]) if not data.get("field") else \
            self.read_dataset_text(data).encode("utf-8")
        try:
            windows = plan_byte_windows(text, data["max_length"], data["stride"])
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        self.status(f"tokenizing {len(windows)} windows of {data['path']} for {len(self.byte_models)} models")
        byte_eval.check_windows(self.byte_models, text, windows)
        release_memory()
        return text, windows, time.perf_counter() - started

    def evaluate_bytes(self, message: dict) -> None:
        """Byte space (SPEC §7): the text's bytes in windows of bytes, every model as a byte LM,
        every setting fused over the 257 outcomes (byte_eval). dataset.bos_per_window does
        not apply: every window starts from each model's start token."""
        request_id = message["request_id"]
        data = message["dataset"]
        self.check_byte_settings(message)                  # before reading: fail fast
        asked = self.positions_request(message)
        text, windows, tokenize_seconds = self.byte_windows(data)
        resume = self.resume_sums(message)
        view = pos.Collector(pos.byte_view(text, asked[1]), asked[0], len(self.models)) if asked is not None else None
        started = time.perf_counter()
        on_progress = self.progress_sender(request_id, len(windows), len(text), started, resume)

        should_stop = self.stop_check(request_id)
        try:
            if view is not None and resume is not None and resume.windows_done:
                try:
                    ev._starting_sums(resume, len(self.byte_models), len(message["settings"]), len(windows))
                except ValueError as e:                    # resume sums that do not fit the request
                    raise RequestError("bad_request", str(e)) from None
                # the view's windows that the checkpoint holds: scored again, for the view alone
                side = min(pos.windows_in_view(windows, view.n_view), resume.windows_done)
                chosen = [message["settings"][k] for k in view.select]
                if side:
                    try:
                        byte_eval.run_pass(self.byte_models, text, windows[:side], chosen, message["batch_size"], None,
                                           lambda _s: None, 10**9, should_stop,
                                           positions=view.for_settings(range(len(chosen))))
                    except ev.Cancelled:
                        raise ev.Cancelled(resume.copy()) from None
            out = byte_eval.run_pass(self.byte_models, text, windows, message["settings"], message["batch_size"],
                                     resume, on_progress, message["progress_every"], should_stop, positions=view)
        except ev.Cancelled as c:
            on_progress(c.sums)
            raise
        except ValueError as e:                            # resume sums that do not fit the request
            raise RequestError("bad_request", str(e)) from None
        self.send_result(request_id, "bytes", len(text), len(windows), out.sums, [b.to_dict() for b in out.beams],
                         started, tokenize_seconds, view_field=self.positions_out(asked, view))

    def evaluate_share(self, message: dict) -> None:
        """A pool's batch (protocol v8 `share`): windows first .. stop − 1 of the request's text,
        batched as one worker batches the whole pass, their sums alone (window_first = first) in
        the result; the controller adds the shares in window order (src/pool.ts). The text's
        windows are kept between the shares of one request (prepared_windows), so a worker
        tokenizes it once. A share past the last window gets empty sums (the controller hands
        out the first shares before it knows how many windows there are)."""
        request_id, data = message["request_id"], message["dataset"]
        first, stop = int(message["share"]["first"]), int(message["share"]["stop"])
        if message.get("resume"):
            raise RequestError("bad_request", "a share of the windows cannot also resume (the controller holds the "
                                              "checkpoint)")
        if self.space == "bytes":
            self.check_byte_settings(message)
            bos_id = None
        else:
            bos_id = self.check_request(message)
        asked = self.positions_request(message)
        prep = self.prepared_windows(data, asked)
        n, n_models = len(prep.windows), len(self.models)
        started = time.perf_counter()
        if first >= n:
            sums = ev.Sums.zeros(n_models, len(message["settings"]))
            sums.window_first = sums.windows_done = n
            beams = [byte_eval.BeamTotals().to_dict() for _ in self.models] if self.space == "bytes" else None
            return self.send_result(request_id, self.space, prep.positions, n, sums, beams, started,
                                    prep.take_seconds(), view_field=self.positions_out(None, None))
        stop = min(stop, n)
        # an out-of-memory retry's smaller forwards (and its one warning) last for the request,
        # not for one of its shares
        if self._share_oom is None or self._share_oom[0] != request_id:
            self._share_oom = (request_id, self.warn_once(), ev.ForwardSize(int(message["batch_size"])))
        view = None
        if asked is not None and prep.view is not None and first < pos.windows_in_view(prep.windows, prep.view.n):
            view = pos.Collector(prep.view, asked[0], n_models)
        never = lambda _s: None                                      # noqa: E731 - a share sends no progress
        try:
            if self.space == "bytes":
                out = byte_eval.run_pass(self.byte_models, prep.text, prep.windows, message["settings"],
                                         message["batch_size"], None, never, 10**9, self.stop_check(request_id),
                                         positions=view, share=(first, stop))
                sums, beams = out.sums, [b.to_dict() for b in out.beams]
            else:
                sums = ev.run_pass(self.models, prep.token_ids, prep.windows, message["settings"],
                                   message["batch_size"], bos_id, len(self.tokenizer), None, never, 10**9,
                                   self.stop_check(request_id), window_bytes=prep.window_bytes, positions=view,
                                   share=(first, stop), on_status=self._share_oom[1], forward=self._share_oom[2])
                beams = None
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        # positions: only in a share that scores some of the view (the controller joins them)
        view_field = {} if asked is None else ({"positions": view.to_dict()} if view is not None else
                                               ({"positions": None} if prep.view is None else {}))
        self.send_result(request_id, self.space, prep.positions, n, sums, beams, started, prep.take_seconds(),
                         view_field=view_field)

    def prepared_windows(self, data: dict, asked) -> "Prepared":
        """The text of a pool's request, tokenized and cut into windows once: kept for the
        next share of the same dataset (and token view), replaced by another's."""
        key = (repr(sorted(data.items())), _file_stamp(data["path"]), asked[1] if asked else None)
        if self._prepared is not None and self._prepared.key == key:
            return self._prepared
        self._prepared = None
        if self.space == "bytes":
            text, windows, seconds = self.byte_windows(data)
            view = pos.byte_view(text, asked[1]) if asked is not None else None
            prep = Prepared(windows, len(text), seconds, text=text, view=view)
        else:
            prep = self.token_windows(data, asked[1] if asked is not None else None)
        prep.key = key
        self._prepared = prep
        return prep

    def token_windows(self, data: dict, view_bytes: int | None = None) -> Prepared:
        """A token-space request's stream-mode text, tokenized and cut into windows: each
        window's bytes of text (the paired bootstrap's weights) and, when `view_bytes` is
        given, the token view's spans; then the text goes. Shared by evaluate, fit and a
        pool's shares. seconds: reading, tokenizing and cutting it."""
        started = time.perf_counter()
        token_ids, text, token_ends = self.tokenize(self.read_dataset_text(data), data["path"])
        try:
            windows = plan_windows(len(token_ids), data["max_length"], data["stride"], bos=data["bos_per_window"])
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        window_bytes = (windows_bytes(windows, text, token_ends) if token_ends is not None
                        else self.decoded_window_bytes(windows, token_ids))
        view = None
        if view_bytes is not None:
            if token_ends is None:
                self.status("warning: no token view: the tokenizer has no offset mapping (a Python tokenizer), "
                            "so its tokens' places in the text are unknown")
            else:
                view = pos.token_view(text, token_ends, view_bytes)
        del text, token_ends
        # the fast tokenizer frees ~850 bytes a token that glibc would keep resident
        # through the pass: hand them back (0.3 ms at 1.5k tokens, 2 ms at 25k), so the
        # request's peak grows with the text by its ids alone (docs/benchmarks.md)
        release_memory()
        return Prepared(windows, len(token_ids), time.perf_counter() - started, token_ids=token_ids,
                        window_bytes=window_bytes, view=view)

    def generate(self, message: dict) -> None:
        """Fused generation (generate.py): every prompt of the request decoded together,
        a chunk message per step, a generated message at the end."""
        request_id = message["request_id"]
        if not self.models:
            raise RequestError("bad_request", "no models are loaded")
        try:
            check_settings([message["setting"]], len(self.models))
            sampling = gen.Sampling.from_dict(message["sampling"])
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        request = gen.Request(list(message["prompts"]), message["setting"], int(message["max_new"]), sampling,
                              list(message["stop"]), bool(message["truncate"]))

        def on_step(step: int, chunks: list[dict]) -> None:
            self.channel.send({"type": "chunk", "request_id": request_id, "step": step, "chunks": chunks})

        warn = lambda m: self.status(f"warning: {m}")      # noqa: E731
        if self.space == "bytes":
            try:
                byte_eval.check_byte_settings([message["setting"]])
            except ValueError as e:
                raise RequestError("bad_request", str(e)) from None
            try:
                out = gen.generate_bytes(self.byte_models, request, on_step, self.stop_check(request_id), warn)
            finally:
                for m in self.byte_models:
                    m.lm.trie.forget()      # as after an evaluation (ByteTrie.forget)
        else:
            tok = self.tokenizer
            start_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            if start_id is None:
                raise RequestError("bad_request", "the tokenizer has neither a BOS nor an EOS token to start from")
            out = gen.generate(self.models, tok, len(tok), request, start_id, on_step, self.stop_check(request_id),
                               warn)
        self.channel.send({"type": "generated", "request_id": request_id, "space": self.space, **out})
        if self.stopping:
            self.channel.send({"type": "bye"})

    def fit(self, message: dict) -> None:
        """Fitting (fit.py): one evaluation pass over the dev text with the request's settings,
        whose chunks a Collector keeps what the optimizers need, then the fits, then a
        fitted message: the dev sums of every model, every setting of the request and every
        fitted setting (after them, in the order of options.fits)."""
        if self.space == "bytes" and self.models:
            return self.fit_bytes(message)
        request_id = message["request_id"]
        data = message["dataset"]
        bos_id = self.check_request(message)            # before tokenizing: fail fast
        options = self.fit_options(message)
        reset_peak_memory()
        prep = self.token_windows(data)
        token_ids, windows, window_bytes, tokenize_seconds = prep.token_ids, prep.windows, prep.window_bytes, prep.seconds
        collector = self.collector(sum(w.n_scored for w in windows), len(self.tokenizer), options,
                                   self.models[0].device)
        started = time.perf_counter()
        on_progress = self.progress_sender(request_id, len(windows), len(token_ids), started, None)
        try:
            sums = ev.run_pass(self.models, token_ids, windows, message["settings"], message["batch_size"], bos_id,
                               len(self.tokenizer), None, on_progress, message["progress_every"],
                               self.stop_check(request_id), window_bytes=window_bytes, collect=collector.add,
                               on_status=self.warn_once())
        except ev.Cancelled as c:
            on_progress(c.sums)
            raise
        self.send_fitted(request_id, "tokens", len(token_ids), len(windows), sums, None, collector, options, started,
                         tokenize_seconds)

    def fit_bytes(self, message: dict) -> None:
        """fit in byte space: the byte pass (byte_eval) with the same collector over the 257 outcomes."""
        request_id = message["request_id"]
        data = message["dataset"]
        self.check_byte_settings(message)
        options = self.fit_options(message)
        text, windows, tokenize_seconds = self.byte_windows(data)
        collector = self.collector(sum(w.n_scored for w in windows), byte_eval.VOCAB, options, "cpu")
        started = time.perf_counter()
        on_progress = self.progress_sender(request_id, len(windows), len(text), started, None)
        try:
            out = byte_eval.run_pass(self.byte_models, text, windows, message["settings"], message["batch_size"],
                                     None, on_progress, message["progress_every"], self.stop_check(request_id),
                                     collect=collector.add)
        except ev.Cancelled as c:
            on_progress(c.sums)
            raise
        self.send_fitted(request_id, "bytes", len(text), len(windows), out.sums, [b.to_dict() for b in out.beams],
                         collector, options, started, tokenize_seconds)

    @staticmethod
    def fit_options(message: dict) -> fitting.FitOptions:
        try:
            return fitting.FitOptions.from_dict(message["options"])
        except ValueError as e:
            raise RequestError("bad_request", f"fit options: {e}") from None

    def collector(self, positions: int, vocab: int, options: fitting.FitOptions, device) -> fitting.Collector:
        """The fit's per-position store, refused (before any window runs) above the memory budget."""
        try:
            return fitting.Collector(len(self.models), vocab, positions, options, device)
        except fitting.FitError as e:
            raise RequestError("bad_request", str(e)) from None

    def send_fitted(self, request_id, space: str, positions: int, n_windows: int, sums: ev.Sums,
                    byte_stats: list[dict] | None, collector: fitting.Collector, options: fitting.FitOptions,
                    started: float, tokenize_seconds: float) -> None:
        """The fits on what the pass kept; their settings' dev sums appended to the pass's."""
        outcome = fitting.run_fits(collector, options, space, self.status, self.stop_check(request_id))
        for f in outcome.fits:
            per_window = fitting.window_sums(collector, f.position_nll, n_windows)
            total = 0.0
            for x in per_window:                     # the total is the window-order sum, as add_window makes it
                total += x
            sums.fusion_nll.append(total)
            sums.window_fusion_nll.append(per_window)
            sums.fusion_weights.append([a * sums.scored_tokens for a in fitting.static_weights(f.setting)])
        first = self.models[0]
        self.channel.send({
            "type": "fitted", "request_id": request_id, "space": space, "tokens": positions, "windows": n_windows,
            "sums": sums.to_dict(), "byte_stats": byte_stats, "fits": [f.to_dict() for f in outcome.fits],
            "positions": collector.positions, "kept_bytes": collector.kept_bytes,
            "seconds": time.perf_counter() - started, "fit_seconds": outcome.seconds,
            "tokenize_seconds": tokenize_seconds, "peak_memory_bytes": peak_memory_bytes(),
            "device": str(first.device), "dtype": str(first.dtype).replace("torch.", ""),
        })
        if self.stopping:
            self.channel.send({"type": "bye"})

    @staticmethod
    def resume_sums(message: dict) -> ev.Sums | None:
        try:
            return ev.Sums.from_dict(message["resume"]) if message["resume"] else None
        except (KeyError, TypeError, ValueError) as e:
            raise RequestError("bad_request", f"resume: not the sums of a run ({e})") from None

    def progress_sender(self, request_id, n_windows: int, positions: int, started: float,
                        resume: ev.Sums | None) -> Callable[[ev.Sums], None]:
        """The pass's on_progress: a progress message with the totals so far and the
        per-window sums of the windows finished since the previous message (the first
        one: since the resume), so that the messages of a request carry each window once."""
        sent = resume.windows_done if resume is not None else 0

        def on_progress(sums: ev.Sums) -> None:
            nonlocal sent
            self.channel.send({"type": "progress", "request_id": request_id, "windows_total": n_windows,
                               "tokens_total": positions, "seconds": time.perf_counter() - started,
                               "sums": sums.to_dict(since=sent)})
            sent = sums.windows_done

        return on_progress

    def decoded_window_bytes(self, windows, token_ids: torch.Tensor) -> list[int]:
        """windows_bytes for a tokenizer without an offset mapping (a Python tokenizer):
        the UTF-8 length of each window's new tokens, decoded. Normalizers and decoding
        clean-ups can make these add up to a little more or less than the text's bytes
        (the controller scales them to the text's bytes)."""
        cuts = [0] + [w.end for w in windows[:-1]] + [len(token_ids)]
        return [len(self.tokenizer.decode(token_ids[a:b].tolist(), skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False).encode("utf-8"))
                for a, b in zip(cuts, cuts[1:])]

    @staticmethod
    def positions_request(message: dict) -> tuple[list[int], int] | None:
        """The request's token view (protocol v6 `positions`): (setting indices, bytes), or None."""
        try:
            return pos.check_request(message.get("positions"), len(message["settings"]))
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None

    @staticmethod
    def positions_out(asked, view: pos.Collector | None) -> dict:
        """The result's `positions` field: absent when the request asked for none, null when
        they are not available (the status message said why)."""
        if asked is None:
            return {}
        return {"positions": view.to_dict() if view is not None else None}

    def send_result(self, request_id, space: str, positions: int, n_windows: int, sums: ev.Sums,
                    byte_stats: list[dict] | None, started: float, tokenize_seconds: float,
                    view_field: dict | None = None) -> None:
        first = self.models[0]
        self.channel.send({
            "type": "result", "request_id": request_id, "space": space, "tokens": positions, "windows": n_windows,
            "sums": sums.to_dict(), "byte_stats": byte_stats, "seconds": time.perf_counter() - started,
            "tokenize_seconds": tokenize_seconds, "peak_memory_bytes": peak_memory_bytes(),
            "device": str(first.device), "dtype": str(first.dtype).replace("torch.", ""), **(view_field or {}),
        })
        if self.stopping:
            self.channel.send({"type": "bye"})

    def check_settings(self, message: dict) -> None:
        if not self.models:
            raise RequestError("bad_request", "no models are loaded (send load first)")
        try:
            check_settings(message["settings"], len(self.models))
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None

    def check_byte_settings(self, message: dict) -> None:
        """check_settings, then what byte space refuses on top (byte_eval.check_byte_settings)."""
        self.check_settings(message)
        try:
            byte_eval.check_byte_settings(message["settings"])
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None

    def check_request(self, message: dict) -> int | None:
        """What an evaluate request can be refused for before any work: no models, a window
        over a model's context, a BOS the tokenizer lacks, bad settings (checked here, the
        one time for the request). Returns the BOS id to put at the head of every window."""
        if not self.models:
            raise RequestError("bad_request", "no models are loaded (send load first)")
        data = message["dataset"]
        max_length, bos = data["max_length"], data["bos_per_window"]
        for m in self.models:
            need = max_length + (1 if bos else 0)
            if m.max_positions is not None and need > m.max_positions:
                raise RequestError("context", f"max_length {max_length}{' + BOS' if bos else ''} is over the "
                                              f"context of {m.ref} ({m.max_positions} positions)")
        bos_id = None
        if bos:
            bos_id = self.tokenizer.bos_token_id
            if bos_id is None:
                raise RequestError("bad_request", "dataset.bos_per_window is true but the tokenizer has no BOS token")
        try:
            check_settings(message["settings"], len(self.models))
        except ValueError as e:
            raise RequestError("bad_request", str(e)) from None
        return bos_id

    def stop_check(self, request_id) -> Callable[[], bool]:
        """The pass's should_stop: reads what arrived meanwhile; a cancel of this request
        or a shutdown stops it (a shutdown also ends the loop after the reply)."""
        cancelled = False

        def should_stop() -> bool:
            nonlocal cancelled
            while (incoming := self.channel.recv(0)) is not None:
                if incoming["type"] == "cancel" and incoming["request_id"] == request_id:
                    cancelled = True
                elif incoming["type"] == "shutdown":
                    cancelled = True
                    self.stopping = True
            return cancelled

        return should_stop

    @staticmethod
    def read_text(path: str) -> bytes:
        """The text file's bytes, which must be UTF-8."""
        try:
            with open(path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            raise RequestError("not_found", f"dataset not found: {path}") from None
        try:
            text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError("bad_request", f"dataset {path} is not UTF-8 (first bad byte at offset {e.start})") from None
        return text

    @staticmethod
    def read_documents(data: dict) -> list[str]:
        """The documents of a dataset: a .jsonl file's `field` of each line, or a plain text
        file as one document (datasets.py)."""
        path = data["path"]
        if data.get("field"):
            try:
                return kdatasets.read_jsonl(path, data["field"])
            except kdatasets.DatasetError as e:
                code = "not_found" if str(e).startswith("dataset not found") else "bad_request"
                raise RequestError(code, str(e)) from None
        try:
            # newline="": the text exactly as its bytes say (no \r\n folding), as the byte count assumes.
            with open(path, encoding="utf-8", newline="") as f:
                return [f.read()]
        except FileNotFoundError:
            raise RequestError("not_found", f"dataset not found: {path}") from None
        except UnicodeDecodeError as e:
            raise RequestError("bad_request", f"dataset {path} is not UTF-8 (first bad byte at offset {e.start})") from None

    def read_dataset_text(self, data: dict) -> str:
        """Stream mode: the text that is scored (a .jsonl's documents joined with the separator)."""
        docs = self.read_documents(data)
        return docs[0] if not data.get("field") else (data.get("separator") if data.get("separator") is not None
                                                      else "\n\n").join(docs)

    def tokenize(self, text: str, path: str, special: bool = True) -> tuple[torch.Tensor, str, torch.Tensor | None]:
        """The text as one token stream [n] (SPEC §2), the text, and where each token's text
        ends in it (character offsets, [n]; None for a tokenizer without offsets).
        special=False: no special tokens (documents mode, as lm-eval's tok_encode)."""
        if path:
            self.status(f"tokenizing {path}")
        # One stream, the tokenizer's defaults (SPEC §2). The length warning is moot:
        # windows cut the stream to max_length.
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        ends = None
        kw = {} if special else {"add_special_tokens": False}
        try:
            try:
                out = self.tokenizer(text, return_attention_mask=False, return_offsets_mapping=True, **kw)
                ends = torch.tensor([e for _, e in out["offset_mapping"]], dtype=torch.long)      # [n]
            except NotImplementedError:      # a Python tokenizer has no offset mapping
                out = self.tokenizer(text, return_attention_mask=False, **kw)
        finally:
            transformers.logging.set_verbosity(verbosity)
        return torch.tensor(out["input_ids"], dtype=torch.long).reshape(-1), text, ends  # [n]

    def evaluate_documents(self, message: dict) -> None:
        """Documents mode: each document tokenized alone (the tokenizer's defaults) and scored with
        lm-evaluation-harness's rolling windows (windows.plan_document_windows), the start
        token (BOS, else EOS) as every document's prefix; every model and every setting
        over the same windows."""
        request_id = message["request_id"]
        data = message["dataset"]
        if data["bos_per_window"]:
            raise RequestError("bad_request", "dataset.bos_per_window does not apply to documents mode "
                                              "(every document starts with the start token)")
        self.check_request(message)
        tok = self.tokenizer
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if prefix is None:
            raise RequestError("bad_request", "documents mode needs a start token: the tokenizer has neither BOS nor EOS")
        reset_peak_memory()
        tokenize_started = time.perf_counter()
        docs = self.read_documents(data)
        self.status(f"tokenizing {len(docs)} document{'s' if len(docs) != 1 else ''} of {data['path']}")
        parts, doc_windows_bytes = [], []
        # the tokenizer's defaults, as lm-eval 0.4.13's HFLM.tok_encode (add_bos_token unset)
        encoded = [self.tokenize(d, "") for d in docs]
        lengths = [len(ids) for ids, _, _ in encoded]
        windows, prefixes = plan_document_windows(lengths, data["max_length"])
        if not windows:
            raise RequestError("bad_request", f"{data['path']}: no document has a token to score")
        w = 0
        for (ids, doc, ends), o in zip(encoded, prefixes):
            if o < 0:
                continue
            parts += [torch.tensor([prefix], dtype=torch.long), ids]
            k = w
            while k < len(windows) and windows[k].start < o + 1 + len(ids):
                k += 1
            local = [type(x)(x.start - o, x.end - o, x.first_scored - o) for x in windows[w:k]]
            if ends is not None:
                doc_windows_bytes += windows_bytes(local, doc, torch.cat([torch.zeros(1, dtype=torch.long), ends]))
            else:      # no offsets: the document's bytes go to its first window
                doc_windows_bytes += [len(doc.encode("utf-8"))] + [0] * (len(local) - 1)
            w = k
        token_ids = torch.cat(parts)
        del encoded, parts
        release_memory()
        tokenize_seconds = time.perf_counter() - tokenize_started
        resume = self.resume_sums(message)
        if resume is not None:
            try:
                ev._starting_sums(resume, len(self.models), len(message["settings"]), len(windows))
            except ValueError as e:
                raise RequestError("bad_request", str(e)) from None
        started = time.perf_counter()
        on_progress = self.progress_sender(request_id, len(windows), len(token_ids), started, resume)
        try:
            sums = ev.run_pass(self.models, token_ids, windows, message["settings"], message["batch_size"], None,
                               len(tok), resume, on_progress, message["progress_every"],
                               self.stop_check(request_id), window_bytes=doc_windows_bytes, feed_last=False,
                               on_status=self.warn_once())
        except ev.Cancelled as c:
            on_progress(c.sums)
            raise
        self.send_result(request_id, "tokens", len(token_ids), len(windows), sums, None, started, tokenize_seconds)


def release_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim; about 5 ms after
    a GPT-2-small pass, measured in-process).
    Without it, the resident high-water mark of a request starts at a resident size
    that holds whatever earlier requests freed and the allocator kept (its free
    lists), which is not this request's. No gc.collect(): a full collection costs
    ~150 ms with torch and transformers loaded, and the pass makes no reference
    cycles (test_scoring_leaves_no_reference_cycles).
    A no-op where there is no malloc_trim (macOS, musl); CUDA's peak counts live
    tensors, not cached blocks, so the GPU needs nothing here."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _find_malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_MALLOC_TRIM = _find_malloc_trim()


def reset_peak_memory() -> None:
    """Start a new peak for this request: CUDA's allocator peak, or on Linux the
    process's resident high-water mark (writing 5 to clear_refs resets VmHWM), from
    memory that was released first (so the peak counts what this request holds)."""
    release_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not allowed: the peak is then the process's lifetime peak


def peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
    except Exception:  # noqa: BLE001
        return 0
