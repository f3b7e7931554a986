"""Speech synthesis with word times (Piper, espeak-ng, Kyutai): one module per engine, chosen by spec."""

from kame.audio.tts.base import Speech, TTSEngine, TTSError, WordTiming
from kame.audio.tts.registry import DEFAULT_TTS, create_tts
from kame.audio.tts.words import spoken_words, text_words

__all__ = [
    "DEFAULT_TTS",
    "Speech",
    "TTSEngine",
    "TTSError",
    "WordTiming",
    "create_tts",
    "spoken_words",
    "text_words",
]
