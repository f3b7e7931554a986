"""``kame eval duplex``: answer every Full-Duplex-Bench sample folder and score its timing.

Layout (v1 and v1.5): one folder per sample holding ``input.wav`` (any rate) and the task's file
(``pause.json``, ``turn_taking.json``, ``interrupt.json``, or v1.5's ``metadata.json``). Each input is
answered by one session of the chosen system; ``output.wav`` (24 kHz, on the input's clock by the one
timing convention, at least as long as the input) and ``output.json`` (``{"text", "chunks": [{"text",
"timestamp": [start, end]}]}``, the format the benchmark's scripts read) are written beside it, and for
v1.5 ``clean_input.wav`` also gets ``clean_output.wav``/``.json``. Words come from our Whisper on the
output audio (for interruptions, on the audio after the interruption's end, offset added back, as the
benchmark's ASR step does), or from the system's own text stream. ``kame_eval.json`` in each folder says
which system and settings wrote the outputs, so a rerun skips what is done and redoes what another
system wrote. Results: ``DIR/results_<system>.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kame.audio.io import load_audio, write_wav
from kame.errors import UserError
from kame.eval.duplex_metrics import score_sample, summarize
from kame.eval.systems import SYSTEMS, SystemSettings
from kame.eval.transcript import ReplyTranscriber, TimedWord, words_in
from kame.frames import SAMPLE_RATE

logger = logging.getLogger(__name__)

TASK_FILES = {"pause.json": "pause_handling", "turn_taking.json": "smooth_turn_taking",
              "interrupt.json": "user_interruption"}  # fmt: skip
V15_FILE = "metadata.json"
MARKER = "kame_eval.json"


class DuplexError(UserError, ValueError):
    """A folder or sample that is not in Full-Duplex-Bench's layout; the message says what is wrong."""


@dataclass
class Sample:
    folder: Path
    task: str | None  # None: answered, but the benchmark scores it otherwise (backchannel: VAD statistics)
    meta: Any = None

    @property
    def cut_at(self) -> float | None:
        """Where the benchmark cuts the output before ASR (the end of a user interruption)."""
        return float(self.meta[0]["timestamp"][1]) if self.task == "user_interruption" else None


def find_samples(root: Path) -> list[Sample]:
    if not root.is_dir():
        raise DuplexError(f"{root}: no such folder (a Full-Duplex-Bench task folder of sample folders)")
    samples = []
    for wav in sorted(root.rglob("input.wav")):
        folder = wav.parent
        task, meta = None, None
        for name, kind in TASK_FILES.items():
            if (folder / name).is_file():
                task, meta = kind, _read_json(folder / name)
                break
        else:
            if (folder / V15_FILE).is_file():
                task, meta = f"v1.5/{folder.parent.name}", _read_json(folder / V15_FILE)
        samples.append(Sample(folder, task, meta))
    if not samples:
        raise DuplexError(f"{root}: no sample folder holds an input.wav")
    return samples


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DuplexError(f"{path}: not valid JSON ({exc.msg})") from exc


def output_json(words: list[TimedWord]) -> dict[str, Any]:
    return {
        "text": " ".join(w.text for w in words),
        "chunks": [{"text": w.text, "timestamp": [round(w.start, 3), round(w.end, 3)]} for w in words],
    }


@dataclass
class DuplexConfig:
    root: Path
    system: str = "kame"
    transcript: str = "audio"
    whisper: str = "embedded"
    progress: bool = True
    models: SystemSettings | None = None


def _marker(config: DuplexConfig) -> dict[str, Any]:
    models = asdict(config.models or SystemSettings())
    models.pop("device")
    return {"system": config.system, "transcript": config.transcript, "whisper": config.whisper, **models}


async def _answer_all(config: DuplexConfig, samples: list[Sample]) -> None:
    from tqdm import tqdm

    marker = _marker(config)
    todo = [s for s in samples if not _done(s.folder, marker)]
    if not todo:
        return
    system = SYSTEMS[config.system](config.models or SystemSettings())
    transcriber = (
        ReplyTranscriber(config.whisper, system.settings.device) if config.transcript == "audio" else None
    )
    try:
        for sample in tqdm(
            todo, desc=f"answering ({config.system})", unit="sample", disable=not config.progress
        ):
            pairs = [("input.wav", "output")]
            if (sample.folder / "clean_input.wav").is_file():
                pairs.append(("clean_input.wav", "clean_output"))
            for source, stem in pairs:
                audio = load_audio(sample.folder / source)
                conversation = await system.converse([audio], None)
                write_wav(sample.folder / f"{stem}.wav", conversation.reply_audio)
                cut = sample.cut_at if stem == "output" else None
                if transcriber is not None:
                    offset = cut or 0.0
                    at = int(offset * SAMPLE_RATE)
                    words = await asyncio.to_thread(transcriber.words, conversation.reply_audio[at:], offset)
                else:
                    words = words_in(conversation.text_words, cut or 0.0, None)
                (sample.folder / f"{stem}.json").write_text(json.dumps(output_json(words), indent=2) + "\n")
            (sample.folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    finally:
        await system.aclose()


def _done(folder: Path, marker: dict[str, Any]) -> bool:
    path = folder / MARKER
    if not (path.is_file() and (folder / "output.wav").is_file() and (folder / "output.json").is_file()):
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")) == marker
    except json.JSONDecodeError:
        return False


def score_folder(root: Path, samples: list[Sample] | None = None) -> dict[str, Any]:
    """Score the ``output.json`` files on disk (whoever wrote them) by the benchmark's definitions."""
    samples = samples if samples is not None else find_samples(root)
    scored = []
    for sample in samples:
        if sample.task is None:
            continue
        path = sample.folder / "output.json"
        if not path.is_file():
            raise DuplexError(f"{path}: missing; answer the samples first (kame eval duplex)")
        chunks = _read_json(path).get("chunks", [])
        scored.append({"folder": str(sample.folder.relative_to(root)), "task": sample.task,
                       **score_sample(sample.task, chunks, sample.meta)})  # fmt: skip
    return {"tasks": summarize(scored), "samples": scored,
            "unscored": [str(s.folder.relative_to(root)) for s in samples if s.task is None]}  # fmt: skip


def run_duplex(config: DuplexConfig) -> tuple[dict[str, Any], Path]:
    if config.system not in SYSTEMS:
        raise DuplexError(f"unknown system {config.system!r}; choose from {', '.join(SYSTEMS)}")
    root = Path(config.root)
    samples = find_samples(root)
    asyncio.run(_answer_all(config, samples))
    results = {"system": config.system, "settings": _marker(config), **score_folder(root, samples)}
    path = root / f"results_{config.system}.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results, path
