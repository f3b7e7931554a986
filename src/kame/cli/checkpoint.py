"""``kame checkpoint``: create, inspect and merge front-end checkpoints."""

from __future__ import annotations

import argparse
import json

from kame.frontend import presets


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("checkpoint", help="create or inspect front-end checkpoints")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", help="write a random checkpoint in the released KAME layout")
    init.add_argument("folder", help="an empty or new folder")
    init.add_argument("--preset", default="tiny", choices=presets.PRESETS)
    init.add_argument("--seed", type=int, default=0)
    init.set_defaults(func=_init)
    info = actions.add_parser("info", help="load a checkpoint and print what it holds")
    info.add_argument("spec", help="a checkpoint folder or hf://owner/name")
    info.add_argument("--device", default="cpu")
    info.set_defaults(func=_info)
    merge = actions.add_parser(
        "merge-lora", help="fuse a LoRA checkpoint (base + adapters) into a plain full checkpoint"
    )
    merge.add_argument("source", help="a LoRA checkpoint folder (e.g. the OUT of kame train --lora-rank)")
    merge.add_argument("target", help="a new or empty folder for the merged checkpoint")
    merge.set_defaults(func=_merge)


def _init(args: argparse.Namespace) -> int:
    from kame.frontend.checkpoint import init_checkpoint

    folder = init_checkpoint(args.folder, preset=args.preset, seed=args.seed)
    print(f"wrote a random {args.preset} checkpoint to {folder}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from kame.frontend.checkpoint import load_frontend

    frontend = load_frontend(args.spec, device=args.device)
    lm = frontend.lm
    summary = {
        "source": frontend.source,
        "upgraded_from_moshi": frontend.upgraded_from_moshi,
        "lm_parameters": sum(p.numel() for p in lm.parameters()),
        "oracle_emb": list(lm.oracle_emb.weight.shape),
        "text_card": lm.text_card,
        "card": lm.card,
        "n_q": lm.n_q,
        "dep_q": lm.dep_q,
        "dim": lm.dim,
        "mimi_parameters": sum(p.numel() for p in frontend.mimi.parameters()),
        "tokenizer_pieces": frontend.tokenizer.get_piece_size() if frontend.tokenizer else None,
        "lm_gen_config": frontend.lm_gen_config,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from kame.cli import UserError
    from kame.frontend.checkpoint import CheckpointError, merge_lora

    try:
        folder = merge_lora(args.source, args.target)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote the merged checkpoint {folder} (load it with --frontend {folder})")
    return 0
