"""``kyutai``: Kyutai's streaming STT (``kyutai/stt-1b-en_fr``) through the ``moshi`` package, for GPUs.

A delayed-streams model: every 80 ms frame of 24 kHz audio goes through Mimi (32 codebooks) and one
LM step, which returns one text token about ``audio_delay_seconds`` behind the audio. Token 0 marks the
start of a word (the end of padding), 3 is padding, tokens above 3 are SentencePiece pieces; a word's
start and end times are the positions of the boundaries around it, minus the silence prefix and the
delay (Kyutai's timestamp recipe). The ``-candle`` release of the same model carries four extra "pause"
heads predicting whether the speaker will have been silent for 0.5/1/2/3 s; the final is emitted when
head ``pause_head`` stays above ``pause_threshold`` for ``pause_hold_frames`` frames after a word
(Kyutai's own examples read head 2 against 0.5). A checkpoint without those heads falls back to the
Silero VAD for the end of speech.

One engine steps all of its streams together: ``max_streams`` batch slots, moshi's exec mask for slots
without a frame, its reset mask for a new stream. Weights come from the Hugging Face hub or a local
folder (config.json, model weights, Mimi weights, tokenizer), loaded once on one stepping thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kame.audio.io import StreamResampler
from kame.backend.stt.base import StreamOptions, STTEngine, STTError, STTStream, Transcript, Word, words_text
from kame.backend.stt.vad import SAMPLE_RATE as VAD_RATE
from kame.backend.stt.vad import SileroModel, SileroVAD, VADConfig
from kame.frames import FRAME_RATE, FRAME_SIZE, SAMPLE_RATE
from kame.moshi_checkpoint import MissingFiles, checkpoint_info, hub_file

logger = logging.getLogger(__name__)

DEFAULT_REPO = "kyutai/stt-1b-en_fr-candle"  # the release with the pause heads
END_OF_PADDING = 0
PADDING = 3


@dataclass
class KyutaiConfig:
    model: str = DEFAULT_REPO  # a Hugging Face repo, or a local folder with its files
    device: str = "cuda"
    dtype: str = "bfloat16"
    max_streams: int = 8  # batch slots: sessions recognized at once
    pause_head: int = 2  # 0..3 = 0.5, 1, 2, 3 s horizons; lower ends turns sooner
    pause_threshold: float = 0.5
    pause_hold_frames: int = 3  # consecutive frames above the threshold (the heads spike on breaths)
    silence_prefix_s: float = 1.0  # silence fed before a stream's audio (the model misses a first word
    #                               that starts at once)
    audio_delay_s: float | None = None  # text lag behind audio; None: the checkpoint's stt_config
    vad: VADConfig = field(default_factory=VADConfig)  # end of speech for checkpoints without heads

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {self.max_streams}")
        if not 0 < self.pause_threshold < 1 or self.pause_hold_frames < 1:
            raise ValueError("pause_threshold must be in (0, 1) and pause_hold_frames >= 1")


@dataclass
class KyutaiModels:
    """What a Kyutai STT checkpoint loads into (also built by tests from tiny random models)."""

    lm: Any  # moshi.models.lm.LMModel with dep_q = 0
    mimi: Any  # moshi.models.compression.MimiModel
    tokenizer: Any  # sentencepiece.SentencePieceProcessor
    stt_config: dict[str, Any]


def load_kyutai_models(config: KyutaiConfig) -> KyutaiModels:
    """Load the checkpoint named by ``config.model`` (hub repo or folder); STTError says what is missing."""
    import torch

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise STTError(
            "kyutai: CUDA is not available on this machine; the 1B model is meant for GPUs. Use "
            "--stt whisper here, or set device='cpu' to run it (far slower than real time on small CPUs)"
        )
    folder = Path(config.model).expanduser()
    info = _info_from_folder(folder) if folder.is_dir() else _info_from_hub(config.model)
    dtype = getattr(torch, config.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise STTError(f"kyutai: unknown dtype {config.dtype!r}; use bfloat16, float16 or float32")
    try:
        lm = info.get_moshi(device=config.device, dtype=dtype)
        mimi = info.get_mimi(device=config.device)
        tokenizer = info.get_text_tokenizer()
    except Exception as exc:  # noqa: BLE001 - corrupt or mismatched files
        raise STTError(f"kyutai: the checkpoint {config.model!r} does not load ({exc})") from exc
    if lm.dep_q != 0:
        raise STTError(f"kyutai: {config.model!r} generates audio (dep_q={lm.dep_q}); it is not an STT model")
    return KyutaiModels(lm.eval(), mimi.eval(), tokenizer, dict(info.stt_config))


def _info_from_folder(folder: Path) -> Any:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise STTError(f"kyutai: {folder} has no config.json")
    try:
        raw = json.loads(config_path.read_text())
        return checkpoint_info(str(folder), config_path, raw, lambda key, name: folder / name)
    except MissingFiles as exc:
        raise STTError(f"kyutai: {folder} lacks {', '.join(path.name for _, path in exc.missing)}") from exc


def _info_from_hub(repo: str) -> Any:
    """Files from the local Hugging Face cache, or downloaded when the hub is reachable.

    moshi's own lookup is not used: offline it retries for most of a minute and then takes the
    repository for a Moshi 7B; here a missing file fails at once and says what to do.
    """
    how = (
        f"download it on a machine with internet access (`huggingface-cli download {repo}`, then copy "
        "the Hugging Face cache), or pass a local folder holding config.json, the model and Mimi "
        "safetensors and the SentencePiece tokenizer (--stt kyutai:/path/to/folder)"
    )

    def locate(key: str, name: str) -> Path:
        return hub_file(repo, name, lambda message: STTError(f"kyutai: {message}"), how)

    config_path = locate("config", "config.json")
    return checkpoint_info(repo, config_path, json.loads(config_path.read_text()), locate)


class WordDecoder:
    """Turns the model's text tokens (one per frame) into timed words, as they come.

    ``seconds(position)`` maps a token position to session seconds.
    """

    def __init__(self, tokenizer: Any, offset_s: float) -> None:
        self.tokenizer = tokenizer
        self.offset_s = offset_s
        self.position = 0  # tokens seen
        self.words: list[Word] = []  # finished words of the current utterance
        self._pieces: list[int] = []  # pieces of the word being spelled
        self._start = 0  # position of the word being spelled
        self._last_piece = 0

    def seconds(self, position: int) -> float:
        return max(0.0, round(position / FRAME_RATE - self.offset_s, 3))

    def feed(self, token: int) -> bool:
        """One token; returns whether the text changed."""
        position = self.position
        self.position += 1
        if token == END_OF_PADDING:
            self._close(position)
            self._start = position + 1
            return False
        if token <= PADDING:
            return False
        if not self._pieces:
            self._start = position
        self._pieces.append(token)
        self._last_piece = position
        return True

    def _close(self, end: int) -> None:
        if not self._pieces:
            return
        text = self.tokenizer.decode(self._pieces).strip()
        self._pieces = []
        parts = text.split()
        start = self._start
        for index, part in enumerate(parts):
            # Rare: several words without a boundary between them; each gets as many frames as pieces.
            if index < len(parts) - 1:
                width = max(1, len(self.tokenizer.encode(part)))
                self.words.append(Word(part, self.seconds(start), self.seconds(start + width)))
                start += width
            else:
                self.words.append(Word(part, self.seconds(start), self.seconds(max(end, start + 1))))

    def current(self) -> list[Word]:
        """Finished words plus the one being spelled (ending after its last piece so far)."""
        words = list(self.words)
        if self._pieces:
            text = self.tokenizer.decode(self._pieces).strip()
            if text:
                end = self.seconds(self._last_piece + 1)
                words.append(Word(text, self.seconds(self._start), end))
        return words

    def take_utterance(self) -> list[Word]:
        """End the utterance: all its words (the one being spelled closes at its last piece)."""
        if self._pieces:
            self._close(self._last_piece + 1)
        words, self.words = self.words, []
        return words


class KyutaiSTT(STTEngine):
    """Kyutai STT over ``max_streams`` batch slots, stepped by one thread."""

    name = "kyutai"
    sample_rate = SAMPLE_RATE

    def __init__(self, config: KyutaiConfig | None = None, models: KyutaiModels | None = None) -> None:
        self.config = config or KyutaiConfig()
        self.models = models
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._slots: list[KyutaiStream | None] = [None] * self.config.max_streams
        self._thread: threading.Thread | None = None
        self._closing = False
        self._vad_model: SileroModel | None = None
        self._pending_reset: Any = None  # bool mask of slots to reset before the next step
        self.steps = 0
        self.step_s = 0.0

    # -- loading --------------------------------------------------------------------------------------
    def load_blocking(self) -> None:
        with self._lock:
            if self.models is None:
                self.models = load_kyutai_models(self.config)
            self._check_models(self.models)
            if self._thread is None:
                self._start_stepping()

    def _check_models(self, models: KyutaiModels) -> None:
        if models.mimi.sample_rate != SAMPLE_RATE or models.mimi.frame_size != FRAME_SIZE:
            raise STTError(f"kyutai: Mimi must run at {SAMPLE_RATE} Hz with {FRAME_SIZE}-sample frames")
        heads = len(models.lm.extra_heads)
        if heads and not 0 <= self.config.pause_head < heads:
            raise STTError(f"kyutai: pause_head {self.config.pause_head} but the model has {heads} heads")

    def _loaded(self) -> KyutaiModels:
        if self.models is None:
            raise STTError("kyutai: the engine is not loaded")
        return self.models

    @property
    def has_pause_heads(self) -> bool:
        return self.models is not None and len(self.models.lm.extra_heads) > 0

    @property
    def audio_delay_s(self) -> float:
        if self.config.audio_delay_s is not None:
            return self.config.audio_delay_s
        stt = self.models.stt_config if self.models else {}
        if "audio_delay_seconds" not in stt:
            raise STTError("kyutai: the checkpoint's stt_config lacks audio_delay_seconds; set audio_delay_s")
        return float(stt["audio_delay_seconds"])

    def _start_stepping(self) -> None:
        import torch
        from moshi.models import LMGen

        models = self._loaded()
        n = self.config.max_streams
        models.lm.eval()
        models.mimi.eval()
        self._lm_gen = LMGen(models.lm, temp=0.0, temp_text=0.0, support_out_of_sync=True)
        self._lm_gen.streaming_forever(n)
        models.mimi.streaming_forever(n)
        self._device = next(models.lm.parameters()).device
        self._needed = models.lm.num_codebooks - models.lm.dep_q - 1
        self._torch = torch
        self._thread = threading.Thread(target=self._run, name="kame-kyutai", daemon=True)
        self._thread.start()

    # -- streams --------------------------------------------------------------------------------------
    def open_stream(self, session: str = "session", options: StreamOptions | None = None) -> KyutaiStream:
        self.load_blocking()
        vad = None
        if not self.has_pause_heads:
            if self._vad_model is None:
                self._vad_model = SileroModel()
            vad = SileroVAD(self.config.vad, self._vad_model)
        with self._lock:
            try:
                slot = self._slots.index(None)
            except ValueError:
                raise STTError(
                    f"kyutai: all {self.config.max_streams} slots are busy; raise max_streams or close one"
                ) from None
            stream = KyutaiStream(self, slot, session, options, vad)
            self._slots[slot] = stream
            self._reset_slot(slot)
        return stream

    def _reset_slot(self, slot: int) -> None:
        """Mark a slot for a fresh streaming state before its next step (call with the lock held)."""
        torch = self._torch
        mask = torch.zeros(self.config.max_streams, dtype=torch.bool, device=self._device)
        mask[slot] = True
        self._pending_reset = mask if self._pending_reset is None else self._pending_reset | mask

    def release(self, stream: KyutaiStream) -> None:
        """Free a stream's slot (its state is reset when the slot is next given out)."""
        with self._lock:
            if self._slots[stream.slot] is stream:
                self._slots[stream.slot] = None

    def notify(self) -> None:
        with self._lock:
            self._wakeup.notify_all()

    def close_blocking(self) -> None:
        with self._lock:
            self._closing = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()

    # -- stepping -------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch = self._torch
        while True:
            with self._lock:
                while not self._closing and not any(s is not None and s.ready() for s in self._slots):
                    self._wakeup.wait(0.05)
                if self._closing:
                    return
                streams = [s for s in self._slots if s is not None]
                reset, self._pending_reset = self._pending_reset, None
            frames = {s.slot: s.next_frame() for s in streams}
            frames = {slot: frame for slot, frame in frames.items() if frame is not None}
            if not frames:
                continue
            try:
                with torch.no_grad(), self._compile_policy():
                    results = self._step(frames, reset)
            except Exception as exc:  # noqa: BLE001 - every stream learns of it; the engine stops
                logger.exception("kyutai: step failed")
                for stream in streams:
                    stream.fail(exc)
                return
            for slot, (token, pause) in results.items():
                stream = self._slots[slot]
                if stream is not None:
                    stream.on_step(token, pause, frames[slot])

    def _compile_policy(self) -> contextlib.AbstractContextManager:
        """moshi compiles hot functions on first use: worth it on a GPU, minutes for nothing on a CPU."""
        from moshi.utils.compile import no_compile

        return contextlib.nullcontext() if self._device.type == "cuda" else no_compile()

    def _step(self, frames: dict[int, _Frame], reset: Any) -> dict[int, tuple[int, float]]:
        torch, models = self._torch, self._loaded()
        started = time.perf_counter()
        n = self.config.max_streams
        if reset is not None:
            models.mimi.reset_streaming(reset)
            self._lm_gen.reset_streaming(reset)
        mask = torch.zeros(n, dtype=torch.bool)
        pcm = torch.zeros(n, 1, FRAME_SIZE)
        for slot, frame in frames.items():
            mask[slot] = True
            pcm[slot, 0] = torch.from_numpy(frame.samples)
        mask = mask.to(self._device)
        models.mimi.set_exec_mask(mask)
        self._lm_gen.set_exec_mask(mask)
        codes = models.mimi.encode(pcm.to(self._device))
        out = self._lm_gen.step_with_extra_heads(codes[:, : self._needed])
        results: dict[int, tuple[int, float]] = {}
        if out is not None:
            tokens, heads = out
            tokens = tokens[:, 0, 0].cpu().tolist()
            pauses = heads[self.config.pause_head][:, 0, 0].float().cpu().tolist() if heads else [0.0] * n
            for slot in frames:
                results[slot] = (int(tokens[slot]), float(pauses[slot]))
        self.steps += 1
        self.step_s += time.perf_counter() - started
        return results


@dataclass
class _Frame:
    samples: np.ndarray  # 1920 samples at 24 kHz
    audio_s: float  # seconds of the session's real audio in it (0 for prefix and flushing silence)


class KyutaiStream(STTStream):
    """One session in one of the engine's slots; its frames are pulled by the engine's thread."""

    def __init__(
        self,
        engine: KyutaiSTT,
        slot: int,
        session: str,
        options: StreamOptions | None,
        vad: SileroVAD | None,
    ) -> None:
        super().__init__(SAMPLE_RATE, session, options)
        if engine.models is None:
            raise STTError("kyutai: load the engine before opening streams")
        self.engine = engine
        self.slot = slot
        config = engine.config
        self._prefix_frames = math.ceil(config.silence_prefix_s * FRAME_RATE)
        self._flush_frames = math.ceil(engine.audio_delay_s * FRAME_RATE) + math.ceil(FRAME_RATE)
        offset_s = self._prefix_frames / FRAME_RATE + engine.audio_delay_s
        self._words = WordDecoder(engine.models.tokenizer, offset_s)
        self._carry = np.zeros(0, np.float32)
        self._fed_prefix = 0
        self._flushed = 0
        self._real_s = 0.0  # seconds of the session's audio fed to the model
        self._vad = vad
        self._to_vad_rate = StreamResampler(VAD_RATE) if vad else None
        self._above = 0  # consecutive frames with the pause head above threshold
        self._end_countdown: int | None = None  # frames until the VAD's end of speech reaches the text
        self.utterance = 0
        self._last_text = ""
        self._stopped = False  # closed or failed: no more frames
        self._input_done = False

    async def _start_worker(self) -> None:
        self.engine.notify()

    @property
    def turn_end_reason(self) -> str:
        return "pause_head" if self._vad is None else "vad_silence"

    @property
    def end_silence_s(self) -> float | None:
        return None if self._vad is None else self._vad.config.min_silence_s

    def set_end_silence(self, seconds: float) -> None:
        """With the pause heads the model decides (semantic end of turn); else the Silero VAD's silence."""
        if self._vad is not None:
            self._vad.config = replace(self._vad.config, min_silence_s=seconds)

    def _enqueue(self, samples: np.ndarray) -> None:
        super()._enqueue(samples)
        self.engine.notify()

    def finish(self) -> None:
        super().finish()
        self.engine.notify()

    # -- called by the engine's stepping thread ---------------------------------------------------------
    def ready(self) -> bool:
        if self._stopped or self._input_done:
            return False
        with self._lock:
            pending = self._pending_samples
            finished = self._finished
        return self._fed_prefix < self._prefix_frames or self._carry.size + pending >= FRAME_SIZE or finished

    def next_frame(self) -> _Frame | None:
        """The next 80 ms to feed: prefix silence, then audio, then (once finished) flushing silence."""
        if self._stopped or self._input_done:
            return None
        if self._fed_prefix < self._prefix_frames:
            self._fed_prefix += 1
            return _Frame(np.zeros(FRAME_SIZE, np.float32), 0.0)
        finished = False
        if self._carry.size < FRAME_SIZE:
            audio, finished, gap = self._take(0)
            self._real_s += gap / SAMPLE_RATE  # dropped audio still moves the session's clock
            self._carry = np.concatenate([self._carry, audio])
        if self._carry.size >= FRAME_SIZE:
            samples, self._carry = self._carry[:FRAME_SIZE], self._carry[FRAME_SIZE:]
            return _Frame(np.ascontiguousarray(samples), FRAME_SIZE / SAMPLE_RATE)
        if not finished:
            return None
        if self._carry.size:  # the last, short frame: padded with silence
            real = self._carry.size
            samples = np.concatenate([self._carry, np.zeros(FRAME_SIZE - real, np.float32)])
            self._carry = np.zeros(0, np.float32)
            return _Frame(samples, real / SAMPLE_RATE)
        if self._flushed >= self._flush_frames:
            self._finish_stream()
            return None
        self._flushed += 1  # silence pushes the last words (``audio_delay_s`` behind) out of the model
        return _Frame(np.zeros(FRAME_SIZE, np.float32), 0.0)

    def on_step(self, token: int, pause: float, frame: _Frame) -> None:
        started = time.perf_counter()
        self._real_s += frame.audio_s
        self.stats.audio_s += frame.audio_s
        out: list[Transcript] = []
        changed = self._words.feed(token)
        if changed:
            words = self._words.current()
            text = words_text(words)
            if text and text != self._last_text:
                self._last_text = text
                stable = len(self._words.words)  # finished words never change
                out.append(Transcript("partial", text, tuple(words), self.utterance, self._heard(), stable))
        if self._speech_ended(pause, frame):
            out.extend(self._final())
        self.stats.decodes += 1
        self.stats.compute_s += time.perf_counter() - started
        self._emit(out)
        with self._lock:
            self._processed_samples = min(self._pushed_samples, int(round(self._real_s * SAMPLE_RATE)))
            processed = self._processed_samples
        self._call_soon(self._release_waiters, processed)

    def _speech_ended(self, pause: float, frame: _Frame) -> bool:
        """The pause head (or, without one, the Silero VAD) says the user stopped after some words."""
        if self._vad is None:
            if not self._words.current():
                self._above = 0
                return False
            self._above = self._above + 1 if pause > self.engine.config.pause_threshold else 0
            return self._above >= self.engine.config.pause_hold_frames
        if self._to_vad_rate is not None and frame.audio_s:
            steps = self._vad.process(self._to_vad_rate(frame.samples, SAMPLE_RATE))
            if any(step.event is not None and step.event.kind == "end" for step in steps):
                # The text lags the audio: the utterance's last words come out ``audio_delay_s`` later.
                self._end_countdown = math.ceil(self.engine.audio_delay_s * FRAME_RATE)
        if self._end_countdown is None:
            return False
        if self._end_countdown > 0:
            self._end_countdown -= 1
            return False
        self._end_countdown = None
        return bool(self._words.current())

    def _heard(self) -> float:
        return round(self._real_s, 3)

    def _final(self) -> list[Transcript]:
        self._above = 0
        words = self._words.take_utterance()
        self._last_text = ""
        if not words:
            return []
        text = words_text(words)
        final = Transcript("final", text, tuple(words), self.utterance, self._heard(), len(words))
        self.utterance += 1
        return [final]

    def _finish_stream(self) -> None:
        self._input_done = True
        self._emit(self._final())
        self.engine.release(self)
        self._end()

    def fail(self, error: BaseException) -> None:
        self._stopped = True
        self.engine.release(self)
        self._end(error)

    async def aclose(self) -> None:
        self._stopped = True
        self.engine.release(self)
        self._deliver_end()
