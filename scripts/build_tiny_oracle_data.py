"""Build the toy oracle-following dataset: spoken Q&A whose answers hold words the question does not
predict (``kame.data.toy_qa``), built by ``kame data build --no-rewrite --oracles verbatim`` (no LLM:
the answer is spoken as written and each question gets its level-5 oracle once fully heard).

    python scripts/build_tiny_oracle_data.py --out data/toy --count 3000 [--seed 0] [--tts espeak]

writes ``OUT/source.jsonl`` (the rows, with their ``keywords``) and the dataset in ``OUT/dataset``, then
prints the build summary and the wall time. Rerunning resumes. A held-out set: another ``--seed`` and
``--out`` (ids carry the seed, so the two never share a record).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from kame.data.toy_qa import write_toy_source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for source.jsonl and dataset/")
    parser.add_argument("--count", type=int, default=3000, help="dialogues (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="draws the rows and the build (default 0)")
    parser.add_argument("--tts", default="espeak", help="TTS spec for both voices (default espeak)")
    parser.add_argument("--workers", type=int, default=2, help="dialogues in flight (default 2)")
    parser.add_argument(
        "--response-gap",
        help="LOW,HIGH: seconds from the question's last word to the answer's first (default: kame data "
        "build's)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    source = write_toy_source(args.out / "source.jsonl", args.count, args.seed)
    command = [
        sys.executable,
        "-m",
        "kame",
        "data",
        "build",
        "--source",
        f"jsonl:{source}",
        "--columns",
        "id=id",
        "--out",
        str(args.out / "dataset"),
        "--tts",
        args.tts,
        "--no-rewrite",
        "--oracles",
        "verbatim",
        "--seed",
        str(args.seed),
        "--workers",
        str(args.workers),
        "--no-progress",
        *(["--response-gap", args.response_gap] if args.response_gap else []),
    ]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode == 0:
        print(f"{args.count} dialogues in {time.monotonic() - started:.1f} s -> {args.out / 'dataset'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
