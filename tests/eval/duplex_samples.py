"""A small Full-Duplex-Bench set in the benchmark's own layout, spoken by the offline TTS.

One sample per task: pause handling (a sentence with a 1.5 s pause), smooth turn-taking (a question,
then silence), user interruption (a request, silence, an interruption), and a v1.5 overlap sample
(``metadata.json``, with ``clean_input.wav``). Inputs are written at 16 kHz, as the benchmark's are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


def _say(tts, text: str):
    from kame.audio.io import resample

    speech = tts.synthesize(text)
    return resample(speech.audio, speech.sample_rate, RATE), speech.words


def _join(parts: list[np.ndarray | float]) -> np.ndarray:
    return np.concatenate(
        [p if isinstance(p, np.ndarray) else np.zeros(int(p * RATE), np.float32) for p in parts]
    )


def _write(folder: Path, audio: np.ndarray, files: dict[str, object], name: str = "input.wav") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(str(folder / name), audio, RATE, subtype="PCM_16")
    for file, content in files.items():
        (folder / file).write_text(json.dumps(content))


def build_duplex_set(root: Path, tts) -> Path:
    first, words = _say(tts, "I was thinking we could go")
    rest, _ = _say(tts, "to the beach tomorrow.")
    pause_start = words[-1].end
    audio = _join([0.3, first, 1.5, rest, 0.5])
    _write(
        root / "pause_handling" / "1",
        audio,
        {
            "pause.json": [
                {"text": "[PAUSE]", "timestamp": [0.3 + pause_start, 0.3 + len(first) / RATE + 1.5]}
            ]
        },
    )
    question, words = _say(tts, "What time does the museum open?")
    end = 0.3 + words[-1].end
    _write(
        root / "smooth_turn_taking" / "1",
        _join([0.3, question, 0.5]),
        {"turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [end, end + 0.4]}]},
    )
    context, _ = _say(tts, "Tell me about the moon.")
    interrupt, words = _say(tts, "Actually, tell me about Mars.")
    start = 0.3 + len(context) / RATE + 2.0
    _write(
        root / "user_interruption" / "1",
        _join([0.3, context, 2.0, interrupt, 0.3]),
        {
            "interrupt.json": [
                {
                    "context": "Tell me about the moon.",
                    "interrupt": "Actually, tell me about Mars.",
                    "timestamp": [start, start + words[-1].end],
                }
            ]
        },
    )
    talk, words = _say(tts, "Can you recommend a good book?")
    noise, _ = _say(tts, "The bus leaves at noon.")
    overlap = (0.3 + len(talk) / RATE + 0.5, 0.3 + len(talk) / RATE + 0.5 + len(noise) / RATE)
    folder = root / "v1.5" / "background_speech" / "1"
    _write(
        folder,
        _join([0.3, talk, 0.5, 0.3 * noise, 0.5]),
        {
            "metadata.json": {
                "context_text": "",
                "current_turn_text": "Can you recommend a good book?",
                "timestamps": list(overlap),
            }
        },
    )
    _write(folder, _join([0.3, talk, 0.5]), {}, name="clean_input.wav")
    return root
