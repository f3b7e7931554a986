"""Training throughput of ``kame train`` (frames per second) and the loss curve of a short run.

Builds a small dataset with espeak voices and an instant local LLM (or uses ``--data DIR``), then trains
the recipe of ``configs/train/tiny.yaml`` for ``--steps`` steps on one thread and prints the logged
losses and the steady-state frames per second (Mimi encoding, done once into the cache, is timed apart)::

    flock /tmp/kame-bench.lock .venv/bin/python bench/train_throughput.py --dialogues 48 --steps 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from data_throughput import instant_llm_server, write_source  # noqa: E402
from kame.data.build import BuildConfig, build  # noqa: E402
from kame.train.config import build_config  # noqa: E402
from kame.train.loop import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="a built dataset (default: build --dialogues of them)")
    parser.add_argument("--dialogues", type=int, default=48)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--config", default=str(ROOT / "configs" / "train" / "tiny.yaml"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        data = Path(args.data) if args.data else folder / "data"
        if not args.data:
            url, stop = instant_llm_server()
            try:
                config = BuildConfig(
                    source=f"jsonl:{write_source(folder, args.dialogues)}", out=data,
                    llm=f"openai:instant@{url}", tts="espeak", limit=args.dialogues, rewrite=False,
                )  # fmt: skip
                build(config, progress=False)
            finally:
                stop()
        namespace = argparse.Namespace(
            config=args.config, data=str(data), out=str(folder / "run"), steps=args.steps, progress=False,
            log_every=10, save_every=args.steps, eval_data=str(data), eval_every=args.steps,
        )  # fmt: skip
        config = build_config(namespace)
        started = time.perf_counter()
        trainer = Trainer(config, echo=lambda _: None)
        setup = time.perf_counter() - started
        trainer.run()
        rows = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    steady = [r["frames_per_s"] for r in train_rows[1:]] or [train_rows[0]["frames_per_s"]]
    figures = {
        "preset": config.init, "batch_size": config.batch_size, "seq_len": config.seq_len,
        "threads": config.threads, "records": len(trainer.records),
        "setup_s_incl_mimi_encoding": round(setup, 2),
        "frames_per_s_median": round(statistics.median(steady), 1),
        "loss_curve": [[r["step"], round(r["loss"], 3), round(r["text_loss"], 3), round(r["audio_loss"], 3)]
                       for r in train_rows],
        "eval": [r for r in rows if "eval_loss" in r],
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
