"""Throughput of ``kame data build`` with the embedded stack (SmolLM2 via llama.cpp, Piper joe).

Builds the same small Q&A set with 1 and 2 dialogues in flight, and times the local LLM alone (time to
first token, tokens per second on simulator-sized prompts), so the figures can be compared as ratios
within one run. Run it alone on the machine::

    flock /tmp/kame-bench.lock .venv/bin/python bench/data_throughput.py --dialogues 12

and work out a full run's machine count with ``--plan 56582``. ``--instant-llm`` replaces the LLM by a
local OpenAI-compatible server that answers at once: the ceiling set by everything else (Piper, the
pipeline, writing), i.e. what a machine does when a remote LLM's latency is hidden by concurrency.
``--fast`` measures the build without any LLM (``--no-rewrite --oracles verbatim``), e.g. with
``--tts espeak --dialogues 300``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from kame.backend.llm import ChatMessage, create_llm
from kame.data.build import BuildConfig, build

QA = [
    (
        "Natalia sold clips to 48 friends in April, and half as many in May. How many clips did she sell?",
        "She sold 48 in April and 24 in May, so 72 clips in all. The answer is 72.",
    ),
    (
        "Weng earns 12 dollars an hour for babysitting. Yesterday she did 50 minutes. How much did she earn?",
        "Fifty minutes is five sixths of an hour, so she earned 10 dollars. The answer is 10.",
    ),
    ("Which gas do plants take in from the air to make their food?", "Plants take in carbon dioxide."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Who painted the ceiling of the Sistine Chapel?", "Michelangelo painted the Sistine Chapel ceiling."),
    (
        "Why do we have seasons on Earth?",
        "Because the Earth's axis is tilted, so each half gets more sun in turn.",
    ),
    (
        "A train travels 60 miles in one hour. How far does it go in three hours?",
        "It goes 60 miles each hour, so 180 miles in three hours. The answer is 180.",
    ),
    ("What is the main job of red blood cells?", "Red blood cells carry oxygen from the lungs to the body."),
    ("Which economist wrote The Wealth of Nations?", "Adam Smith wrote The Wealth of Nations in 1776."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    (
        "If a shirt costs 20 dollars and is 25 percent off, what is the sale price?",
        "A quarter of 20 is 5, so the shirt costs 15 dollars. The answer is 15.",
    ),
    (
        "What is democracy, in simple words?",
        "Democracy is a system where the people choose their leaders by voting.",
    ),
]


def write_source(folder: Path, count: int) -> Path:
    path = folder / "qa.jsonl"
    rows = [
        {"question": QA[i % len(QA)][0], "answer": QA[i % len(QA)][1], "id": f"q{i:04d}"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def llm_figures(prompts: int) -> dict[str, float]:
    llm = create_llm("local")
    ttfts, rates = [], []
    for i in range(prompts):
        question, answer = QA[i % len(QA)]
        messages = [
            ChatMessage(
                "system", "You are the assistant in a spoken conversation. Guess your answer in 30 words."
            ),
            ChatMessage(
                "user", f"User, still speaking: {question}\n\nReference: {answer}\n\nYour spoken answer:"
            ),
        ]
        start = time.perf_counter()
        first, count = None, 0
        async for _ in llm.stream_chat(messages, max_tokens=64, temperature=0.7):
            count += 1
            first = first or time.perf_counter()
        end = time.perf_counter()
        ttfts.append(first - start)
        if count > 1:
            rates.append((count - 1) / (end - first))
    return {
        "ttft_median_s": round(statistics.median(ttfts), 3),
        "ttft_p90_s": round(sorted(ttfts)[int(0.9 * (len(ttfts) - 1))], 3),
        "tokens_per_s_median": round(statistics.median(rates), 1),
    }


def instant_llm_server():  # type: ignore[no-untyped-def]
    """An OpenAI-compatible server on 127.0.0.1 that answers a fixed sentence at once; returns (url, stop)."""
    import threading

    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        text = "Well, I think the answer is about what you asked, and here it is in a short sentence."
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "instant",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)

    async def start() -> str:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]

    threading.Thread(target=loop.run_forever, daemon=True).start()
    url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)

    return url, stop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dialogues", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--llm", default="local")
    parser.add_argument("--tts", default="piper")
    parser.add_argument("--plan", type=int, default=56582, help="dialogues of a full run to plan for")
    parser.add_argument("--hours", type=float, default=24.0, help="wall-clock budget for the plan")
    parser.add_argument("--instant-llm", action="store_true", help="measure the ceiling without LLM time")
    parser.add_argument(
        "--fast", action="store_true", help="no LLM at all: --no-rewrite --oracles verbatim (level 5 only)"
    )
    args = parser.parse_args()

    stop = None
    if args.fast:
        results: dict[str, object] = {"llm": "none (--no-rewrite --oracles verbatim)"}
    elif args.instant_llm:
        url, stop = instant_llm_server()
        args.llm = f"openai:instant@{url}"
        results = {"llm": "instant (ceiling without LLM time)"}
    else:
        results = {"llm": asyncio.run(llm_figures(12))}
    with tempfile.TemporaryDirectory() as tmp:
        source = write_source(Path(tmp), args.dialogues)
        for workers in args.workers:
            out = Path(tmp) / f"out-w{workers}"
            config = BuildConfig(
                source=f"jsonl:{source}",
                out=out,
                llm=args.llm,
                tts=args.tts,
                workers=workers,
                llm_concurrency=max(2, 2 * workers),
                rewrite=not args.fast,
                oracles="verbatim" if args.fast else "simulated",
            )
            start = time.perf_counter()
            summary = build(config, progress=False)
            summary["wall_s"] = round(time.perf_counter() - start, 1)
            results[f"build_workers_{workers}"] = summary
    if stop is not None:
        stop()
    best = max(
        (v for k, v in results.items() if k.startswith("build_")), key=lambda s: s["dialogues_per_minute"]
    )
    per_machine_per_day = best["dialogues_per_minute"] * 60 * args.hours
    machines = math.ceil(args.plan / per_machine_per_day)
    results["plan"] = {
        "dialogues": args.plan,
        "dialogues_per_machine_per_hour": round(best["dialogues_per_minute"] * 60, 1),
        "machine_hours": round(args.plan / (best["dialogues_per_minute"] * 60), 1),
        f"machines_for_{args.hours:g}_hours": machines,
        "command_on_machine_I": f"kame data build --source SPEC --out DIR --shard I/{machines} --workers W",
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
