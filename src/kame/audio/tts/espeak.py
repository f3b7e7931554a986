"""``espeak``: Debian's espeak-ng through its C library, with word times from its synthesis events.

espeak-ng reports a word event (character position in the text, sample position in the audio) as it
starts each word, and phoneme events as it starts each phoneme; a word ends where the next word or a
pause phoneme begins. The library is process-global and not thread-safe, so one lock serializes it. It
is not exactly repeatable within a process (its generator keeps a little state between calls: the same
text can come out a few samples longer), unlike Piper.
Voices: any espeak-ng voice name with an optional variant (``en-us``, ``en-gb``, ``en-us+f3``, ...).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

import numpy as np

from kame.audio.tts.base import Speech, TTSEngine, TTSError, WordTiming
from kame.audio.tts.words import TextWord, text_words

DEFAULT_VOICE = "en-us"
# A few English voices and variants, for variety in generated data.
VARIETY = ("en-us", "en-gb", "en-us+f3", "en-gb+f4", "en-us+m3", "en-029")
BASE_WPM = 175

# espeak-ng's C API constants (speak_lib.h)
_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_END_OF_LIST = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, language string) pairs, ended by a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _languages(address: int | None) -> list[str]:
    found: list[str] = []
    while address and ctypes.c_ubyte.from_address(address).value != 0:
        language = ctypes.string_at(address + 1).decode("ascii", "replace")
        found.append(language.lower())
        address += 2 + len(language)
    return found


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class _Mark:
    kind: str  # "word" | "phoneme"
    sample: int
    text_position: int = 0  # 1-based character position (words)
    length: int = 0
    pause: bool = False  # a pause phoneme ("_", "_:")


class _Library:
    """The loaded libespeak-ng with its callback; use only under ``lock``."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as exc:
            raise TTSError("espeak-ng's library is missing; install it (apt-get install espeak-ng)") from exc
        self.lock = threading.Lock()
        self.sample_rate = self.lib.espeak_Initialize(
            _OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        )
        if self.sample_rate <= 0:
            code = self.sample_rate
            raise TTSError(f"espeak-ng failed to initialize (code {code}); is espeak-ng-data installed?")
        self.chunks: list[np.ndarray] = []
        self.marks: list[_Mark] = []
        self._callback = _CALLBACK(self._on_audio)  # kept referenced: C holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]

    def resolve_voice(self, voice: str) -> str:
        """A name espeak_SetVoiceByName accepts: its voice file identifier, plus any ``+variant``."""
        base, _, variant = voice.partition("+")
        self.lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        listed = self.lib.espeak_ListVoices(None)
        matches: list[tuple[int, str]] = []
        i = 0
        while listed[i]:
            entry = listed[i].contents
            identifier = (entry.identifier or b"").decode()
            names = {(entry.name or b"").decode().lower(), identifier.lower()}
            languages = _languages(entry.languages)
            if base.lower() in names or base.lower() in languages:
                rank = languages.index(base.lower()) if base.lower() in languages else 0
                matches.append((rank, identifier))
            i += 1
        if not matches:
            raise TTSError(f"espeak-ng has no voice {base!r}; list them with `espeak-ng --voices=en`")
        identifier = min(matches)[1]
        return f"{identifier}+{variant}" if variant else identifier

    def _on_audio(self, wav, count, events) -> int:  # type: ignore[no-untyped-def]
        if wav and count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).astype(np.float32) / 32768.0)
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            event = events[i]
            if event.type == _EVENT_WORD and event.length > 0:
                self.marks.append(_Mark("word", event.sample, event.text_position, event.length))
            elif event.type == _EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0")[0].decode("ascii", "replace")
                self.marks.append(_Mark("phoneme", event.sample, pause=name.startswith("_")))
            i += 1
        return 0

    def speak(self, text: str, voice: str, wpm: int) -> tuple[np.ndarray, list[_Mark]]:
        self.chunks, self.marks = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            resolved = self.resolve_voice(voice)
            if self.lib.espeak_SetVoiceByName(resolved.encode()) != 0:
                raise TTSError(f"espeak-ng cannot use voice {voice!r} ({resolved}); check its +variant name")
        self.lib.espeak_SetParameter(_PARAM_RATE, wpm, 0)
        data = text.encode("utf-8")
        code = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if code != 0:
            raise TTSError(f"espeak-ng failed to speak {text[:60]!r} (code {code})")
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32)
        return audio, self.marks


_LIBRARY: _Library | None = None
_LIBRARY_LOCK = threading.Lock()


def _library() -> _Library:
    """The process's one espeak-ng instance (the C library holds global state)."""
    global _LIBRARY
    with _LIBRARY_LOCK:
        if _LIBRARY is None:
            _LIBRARY = _Library()
        return _LIBRARY


class EspeakTTS(TTSEngine):
    name = "espeak"

    def __init__(self, voice: str = DEFAULT_VOICE) -> None:
        self.default_voice = voice
        self._lib = _library()

    @property
    def sample_rate(self) -> int:
        return int(self._lib.sample_rate)

    def voices(self) -> list[str]:
        return list(VARIETY)

    def synthesize(self, text: str, *, voice: str | None = None, rate: float = 1.0) -> Speech:
        words = text_words(text)
        if not words:
            raise TTSError(f"nothing to speak in {text!r}")
        wpm = int(round(BASE_WPM * rate))
        if not 80 <= wpm <= 450:
            raise TTSError(f"rate {rate} gives {wpm} words/min; espeak-ng speaks 80-450 (rate 0.46-2.57)")
        with self._lib.lock:
            audio, marks = self._lib.speak(text, voice or self.default_voice, wpm)
        if audio.size == 0:
            raise TTSError(f"espeak-ng produced no audio for {text[:60]!r}")
        timings = _word_times(words, marks, self.sample_rate)
        return Speech(audio=audio, sample_rate=self.sample_rate, words=timings)


def _word_times(words: list[TextWord], marks: list[_Mark], sample_rate: int) -> list[WordTiming]:
    """Each text word starts at its first word event and ends where the next word or a pause begins."""
    starts: dict[int, int] = {}  # text word index -> first mark index
    owner: list[int | None] = []  # for each mark, the text word it belongs to
    current: int | None = None
    for k, mark in enumerate(marks):
        if mark.kind == "word":
            char = mark.text_position - 1
            current = next((i for i, w in enumerate(words) if w.start <= char < w.end), None)
            if current is None:  # an event inside punctuation: give it to the word that follows
                current = next((i for i, w in enumerate(words) if w.start >= char), None)
            if current is not None and current not in starts:
                starts[current] = k
        owner.append(None if (mark.kind == "phoneme" and mark.pause) else current)
    spans: list[tuple[float, float] | None] = []
    last_end = 0.0
    for i in range(len(words)):
        if i not in starts:  # espeak spoke it together with the word before (e.g. "of the"), or not at all
            spans.append(None)
            continue
        k = starts[i]
        end_mark = next((j for j in range(k + 1, len(marks)) if owner[j] != i), None)
        start_s = max(marks[k].sample / sample_rate, last_end)
        end_s = marks[end_mark].sample / sample_rate if end_mark is not None else start_s
        end_s = max(end_s, start_s)
        spans.append((start_s, end_s))
        last_end = end_s
    return _share_merged_spans(words, spans)


def _share_merged_spans(words: list[TextWord], spans: list[tuple[float, float] | None]) -> list[WordTiming]:
    """Words without their own event share the span of the word before, in proportion to their length."""
    timings: list[WordTiming] = []
    i = 0
    while i < len(words):
        group = [i]
        while group[-1] + 1 < len(words) and spans[group[-1] + 1] is None:
            group.append(group[-1] + 1)
        span = spans[i] or ((timings[-1].end, timings[-1].end) if timings else (0.0, 0.0))
        lengths = [len(words[j].word) for j in group]
        t = span[0]
        for j, length in zip(group, lengths, strict=True):
            t_end = t + (span[1] - span[0]) * length / sum(lengths)
            timings.append(WordTiming(words[j].word, t, t_end))
            t = t_end
        i = group[-1] + 1
    return timings
