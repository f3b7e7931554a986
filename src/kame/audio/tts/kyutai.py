"""``kyutai``: Kyutai's delayed-streams TTS (``kyutai/tts-1.6b-en_fr``) through the ``moshi`` package.

For GPU machines that have the weights (Hugging Face cache, a reachable hub, or a local folder passed as
``kyutai:/path``). It follows moshi's ``TTSModel`` API: ``prepare_script`` -> ``generate`` -> Mimi
decode, voice conditioning from the ``kyutai/tts-voices`` embeddings. Word times come from the model's
own transcript: the step at which each word entered the text stream, shifted by the frames that
``simple_generate`` drops, so they are exact to one 80 ms frame; a word ends where the next one starts.
Without weights, construction fails at once with what to do (no minute of hub retries).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from kame.audio.tts.base import Speech, TTSEngine, TTSError, WordTiming
from kame.audio.tts.words import text_words
from kame.moshi_checkpoint import MissingFiles, checkpoint_info, hub_file

DEFAULT_REPO = "kyutai/tts-1.6b-en_fr"
VOICE_REPO = "kyutai/tts-voices"
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"
VARIETY = (
    DEFAULT_VOICE,
    "expresso/ex01-ex02_default_001_channel1_168s.wav",
    "expresso/ex04-ex02_default_001_channel1_261s.wav",
    "vctk/p225_023.wav",
    "vctk/p226_023.wav",
)
DROPPED_FRAMES = 2  # moshi's simple_generate drops two decoded frames (a click at the start)


def _hub_file(repo: str, name: str) -> Path:
    """A file of a Hugging Face repository: from the cache, else downloaded; a clear TTSError if neither."""
    how = (
        f"download it where the hub is reachable (`huggingface-cli download {repo}`) and copy the cache, "
        "or pass a local folder (--tts kyutai:/path/to/folder); Kyutai's TTS also wants a GPU"
    )
    return hub_file(repo, name, lambda message: TTSError(f"kyutai: {message}"), how)


def _checkpoint_info(source: str) -> Any:
    folder = Path(source).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise TTSError(f"kyutai: {folder} has no config.json")
        locate = lambda key, name: folder / name  # noqa: E731
    else:
        if source.count("/") != 1:
            raise TTSError(f"kyutai: {source!r} is neither a folder nor a Hugging Face repo (owner/name)")
        config = _hub_file(source, "config.json")
        locate = lambda key, name: _hub_file(source, name)  # noqa: E731
    raw = json.loads(Path(config).read_text())
    if "tts_config" not in raw:
        raise TTSError(f"kyutai: {source} is not a TTS checkpoint (its config.json has no tts_config)")
    try:
        return checkpoint_info(str(source), Path(config), raw, locate)
    except MissingFiles as exc:
        raise TTSError(f"kyutai: {source} lacks {', '.join(str(path) for _, path in exc.missing)}") from exc


class KyutaiTTS(TTSEngine):
    name = "kyutai"

    def __init__(
        self,
        source: str = DEFAULT_REPO,
        *,
        device: str | None = None,
        n_q: int = 32,
        cfg_coef: float = 2.0,
        voice_repo: str = VOICE_REPO,
    ) -> None:
        import torch
        from moshi.models.tts import TTSModel

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        info = _checkpoint_info(source)
        try:
            self.model = TTSModel.from_checkpoint_info(
                info,
                n_q=n_q,
                temp=0.6,
                device=device,
                voice_repo=voice_repo,
                dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32,
            )
        except Exception as exc:  # noqa: BLE001 - weights that do not fit the config
            message = f"kyutai: {source} does not load as a TTS model ({type(exc).__name__}: {exc})"
            raise TTSError(message) from exc
        self.cfg_coef = cfg_coef
        self.voice_repo = voice_repo
        self._lock = threading.Lock()  # one generation at a time per model

    @property
    def sample_rate(self) -> int:
        return int(self.model.mimi.sample_rate)

    def voices(self) -> list[str]:
        return list(VARIETY)

    def _voice_file(self, voice: str) -> Path:
        if voice.endswith(".safetensors"):
            path = Path(voice).expanduser()
            if not path.is_file():
                raise TTSError(f"kyutai: no voice embedding file {path}")
            return path
        return _hub_file(self.voice_repo, voice + self.model.voice_suffix)

    def synthesize(self, text: str, *, voice: str | None = None, rate: float = 1.0) -> Speech:
        import torch

        words = text_words(text)
        if not words:
            raise TTSError(f"nothing to speak in {text!r}")
        if not 0.5 <= rate <= 2.0:
            raise TTSError(f"rate must be between 0.5 and 2 for Kyutai's TTS, got {rate}")
        model = self.model
        with self._lock, torch.no_grad():
            model.padding_bonus = -2.0 * math.log(rate)  # pads slow speech down; fewer pads speed it up
            entries = model.prepare_script([text], padding_between=1)
            voice_file = self._voice_file(voice or DEFAULT_VOICE)
            distilled = bool(model.valid_cfg_conditionings)
            if not distilled:
                model.cfg_coef = self.cfg_coef
            if model.multi_speaker:
                attributes = [
                    model.make_condition_attributes(
                        [voice_file], cfg_coef=self.cfg_coef if distilled else None
                    )
                ]
                prefixes, prefix_frames = None, 0
            else:
                prefix = model.get_prefix(voice_file)
                attributes, prefixes, prefix_frames = [], [prefix], prefix.shape[-1]
            result = model.generate([entries], attributes, prefixes=prefixes)
            end_step = result.end_steps[0]
            if end_step is None:
                raise TTSError(f"kyutai: the text did not fit the generation budget: {text[:60]!r}")
            pcm = []
            with model.mimi.streaming(1):
                for frame in result.frames[model.delay_steps :]:
                    pcm.append(torch.clip(model.mimi.decode(frame[:, 1:, :]), -1, 1)[0, 0])
            frames = pcm[DROPPED_FRAMES:][prefix_frames:end_step]
            audio = torch.cat(frames).float().cpu().numpy() if frames else np.zeros(0, dtype=np.float32)
        if audio.size == 0:
            raise TTSError(f"kyutai: no audio for {text[:60]!r}")
        frame_s = 1.0 / model.mimi.frame_rate
        # A word consumed at text step s is heard in output frame s - DROPPED_FRAMES - prefix_frames.
        transcript = result.all_transcripts[0]
        starts = [max(0.0, (step - DROPPED_FRAMES - prefix_frames) * frame_s) for _, step in transcript]
        spoken = [w for w, _ in transcript]
        return Speech(
            audio=audio.astype(np.float32),
            sample_rate=self.sample_rate,
            words=_match(words, spoken, starts, audio.size / self.sample_rate),
        )


def _match(words, spoken: list[str], starts: list[float], duration: float) -> list[WordTiming]:  # type: ignore[no-untyped-def]
    """Pair the model's transcript words with the text's words; [] when they do not correspond."""
    cores = [text_words(s) for s in spoken]
    flat = [(group[0].word if group else "", t) for group, t in zip(cores, starts, strict=True)]
    flat = [(w, t) for w, t in flat if w]
    if [w for w, _ in flat] != [w.word for w in words]:
        return []
    timings = []
    for k, (word, start) in enumerate(flat):
        end = flat[k + 1][1] if k + 1 < len(flat) else duration
        start = min(start, duration)
        timings.append(WordTiming(word, start, max(start, min(end, duration))))
    return timings
