"""``kame train``: fine-tune a front-end on ``kame data build`` datasets (also ``python -m kame.train``)."""

from __future__ import annotations

import argparse
import os

from kame.cli import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from kame.train.config import add_arguments

    parser = sub.add_parser(
        "train",
        help="fine-tune the front-end with the oracle stream (resumable: rerun the same command)",
        description="Settings come from --config FILE.yaml (keys are the flags' names), overridden by flags.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kame import heap
    from kame.frontend.checkpoint import CheckpointError
    from kame.train.config import ConfigError, build_config
    from kame.train.data import DataError
    from kame.train.loop import train
    from kame.train.state import RunError

    try:
        config = build_config(args)
        if config.device == "cpu":
            heap.keep_blocks_in_heap()  # the step's large tensors stay mapped (heap.py: 25 % faster)
        last = train(config)
    except (ConfigError, DataError, RunError, CheckpointError) as exc:
        raise UserError(str(exc)) from exc
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    if last:
        print(
            "last: "
            + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
        )
    print(f"wrote {config.out} (load it with --frontend {config.out})")
    return 0
