"""Front-end checkpoints in the layout of the released KAME and Moshi repositories.

A checkpoint is a folder (or a Hugging Face repository, ``hf://owner/name``) holding ``config.json`` in
moshi's convention: file keys (``moshi_name``, ``mimi_name``, ``mimi_config_name``, ``tokenizer_name``,
``lora_name``, ``model_type``, ``lm_gen_config``) and otherwise LM constructor arguments. Files are
resolved by moshi's own ``CheckpointInfo``; this module adds the oracle embedding, checks that the files
agree with each other, and upgrades plain Moshi weights (no ``oracle_emb.*``) by copying the text
embedding into the oracle embedding, as KAME's fine-tuning does.

A file key names a file in the folder (a relative path), or, in moshi's own syntax, a file elsewhere:
``file:///abs/path`` or ``hf://owner/name/file`` (here also ``hf://owner/name@revision/file``). So a LoRA
checkpoint written by ``kame train --lora-rank`` holds only its config and adapters and names the base
weights, Mimi and tokenizer where they already are.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import sentencepiece
import torch
from moshi.models import loaders as moshi_loaders
from moshi.models.compression import MimiModel
from moshi.quantization.core_vq import EuclideanCodebook
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kame.errors import UserError
from kame.frontend import presets
from kame.frontend.model import OracleLMModel
from kame.frontend.rng import seeded
from kame.frontend.tiny_mimi import load_tiny_mimi
from kame.moshi_checkpoint import checkpoint_info

logger = logging.getLogger(__name__)

DEFAULT_FRONTEND = "hf://SakanaAI/kame"
CONFIG_NAME = "config.json"
TINY_FILES = {
    "moshi_name": "model.safetensors",
    "mimi_name": "mimi.safetensors",
    "mimi_config_name": "mimi_config.json",
    "tokenizer_name": "tokenizer.model",
}
# Keys of config.json that moshi's CheckpointInfo reads as file/run settings, not LM arguments.
_FILE_KEYS = (
    "moshi_name",
    "mimi_name",
    "mimi_config_name",
    "tokenizer_name",
    "lora_name",
    "model_type",
    "lm_gen_config",
    "tts_config",
    "stt_config",
    "model_id",
)
_LORA_KEYS = ("lora", "lora_rank", "lora_scaling")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used as it is; the message says what to fix."""


@dataclass
class Frontend:
    """Everything the front-end runs on: the oracle LM, Mimi and the text tokenizer."""

    lm: OracleLMModel
    mimi: MimiModel
    tokenizer: sentencepiece.SentencePieceProcessor | None
    lm_config: dict[str, Any]
    lm_gen_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    upgraded_from_moshi: bool = False

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def text_card(self) -> int:
        return self.lm.text_card


def _is_hf(spec: str) -> bool:
    return spec.startswith("hf://")


def resolve_checkpoint(
    spec: str | Path, lora_weights: str | Path | None = None
) -> moshi_loaders.CheckpointInfo:
    """Find the files of a checkpoint with moshi's ``CheckpointInfo``: a local folder or ``hf://repo``."""
    spec = str(spec)
    lora = (
        Path(lora_weights)
        if lora_weights is not None and not str(lora_weights).startswith("hf://")
        else lora_weights
    )
    if _is_hf(spec):
        repo, _, revision = spec.removeprefix("hf://").partition("@")
        if repo.count("/") != 1:
            raise CheckpointError(
                f"{spec!r}: a Hugging Face checkpoint is written hf://owner/name[@revision]"
            )
        try:
            return moshi_loaders.CheckpointInfo.from_hf_repo(
                repo, lora_weights=lora, revision=revision or None
            )
        except Exception as exc:  # network, auth, missing repo: all end here
            raise CheckpointError(
                f"could not fetch {spec} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                "Check the network and HF_TOKEN, or download the repository and pass its folder."
            ) from exc
    folder = Path(spec)
    config_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such checkpoint folder. Pass a folder with config.json, an hf://owner/name "
            "repository, or create a test checkpoint with `kame checkpoint init --preset tiny DIR`."
        )
    if not config_path.is_file():
        return _legacy_folder(folder, lora)
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path}: must hold a JSON object of settings")

    given = {"lora_weights": lora} if lora is not None else {}
    # "local-folder" is never contacted: every file is a local Path (checkpoint_file fetches hf:// ones)
    return checkpoint_info(
        "local-folder", config_path, raw, lambda key, name: checkpoint_file(folder, key, name),
        moshi_default=moshi_loaders.MOSHI_NAME, **given,
    )  # fmt: skip


def checkpoint_file(folder: Path, key: str, name: str) -> Path:
    """One file named by config.json: relative to the folder, ``file:///abs/path`` or ``hf://...``."""
    if name.startswith("hf://"):
        parts = name.removeprefix("hf://").split("/")
        if len(parts) < 3:
            raise CheckpointError(
                f"{folder}: config.json {key}={name!r}: write hf://owner/name[@revision]/file"
            )
        repo, _, revision = f"{parts[0]}/{parts[1]}".partition("@")
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo, "/".join(parts[2:]), revision=revision or None))
        except Exception as exc:  # network, auth, missing file: all end here
            raise CheckpointError(
                f"{folder}: could not fetch {key}={name!r} from the Hugging Face hub ({type(exc).__name__}: "
                f"{exc}). Check the network and HF_TOKEN, or download it and name the local file."
            ) from exc
    path = Path(name.removeprefix("file://")) if name.startswith("file://") else folder / name
    if not path.is_file():
        raise CheckpointError(f"{folder}: config.json names {key}={name!r} but {path} does not exist")
    return path


def _legacy_folder(folder: Path, lora: Path | str | None) -> moshi_loaders.CheckpointInfo:
    """A folder without config.json, read as moshi reads such a (legacy) repository: Moshi 7B defaults."""
    names = {
        "moshi_name": moshi_loaders.MOSHI_NAME,
        "mimi_name": moshi_loaders.MIMI_NAME,
        "tokenizer_name": moshi_loaders.TEXT_TOKENIZER_NAME,
    }
    missing = [name for name in names.values() if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder}: not a checkpoint folder: no {CONFIG_NAME}, and not a legacy Moshi folder either "
            f"(missing {', '.join(missing)}). Add a config.json, or create a test checkpoint with "
            "`kame checkpoint init --preset tiny DIR`."
        )
    logger.warning(
        "%s has no %s: reading it as a legacy Moshi folder, as moshi does, with moshiko's default LM "
        "settings (moshi.models.loaders._lm_kwargs: dim %s, %s layers, text_card %s) and files %s",
        folder,
        CONFIG_NAME,
        moshi_loaders._lm_kwargs.get("dim"),
        moshi_loaders._lm_kwargs.get("num_layers"),
        moshi_loaders._lm_kwargs.get("text_card"),
        ", ".join(names.values()),
    )
    return moshi_loaders.CheckpointInfo(
        folder / names["moshi_name"],
        folder / names["mimi_name"],
        folder / names["tokenizer_name"],
        lm_config=None,
        raw_config=None,
        mimi_config=None,
        model_type="moshi",
        lora_weights=Path(lora) if lora is not None else None,
        lm_gen_config={},
        tts_config={},
        stt_config={},
        model_id={},
    )


def _prepare_lm_kwargs(lm_config: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Turn config.json's LM settings into constructor kwargs the way moshi's loader does."""
    kwargs = dict(moshi_loaders._lm_kwargs if lm_config is None else lm_config)
    for key in _FILE_KEYS:
        kwargs.pop(key, None)
    if "conditioners" in kwargs or kwargs.get("fuser") is not None:
        raise CheckpointError(
            "conditioned models (conditioners/fuser in config.json) are not KAME front-ends"
        )
    kwargs.pop("depformer_causal", None)
    if "demux_second_stream" in kwargs:
        kwargs["demux_second_text_stream"] = kwargs.pop("demux_second_stream")
    lora = {k: kwargs.pop(k) for k in _LORA_KEYS if k in kwargs}
    return kwargs, lora


def build_lm(lm_kwargs: dict[str, Any], device: torch.device | str, dtype: torch.dtype) -> OracleLMModel:
    """Instantiate the oracle LM; unknown config keys become a clear error."""
    try:
        return OracleLMModel(device=device, dtype=dtype, **lm_kwargs)
    except TypeError as exc:
        raise CheckpointError(
            f"config.json holds a setting that is not an LM constructor argument: {exc}"
        ) from exc


def check_and_upgrade_state(model: OracleLMModel, state: dict[str, torch.Tensor], source: str) -> bool:
    """Validate an LM state dict against the model; copy ``text_emb`` into ``oracle_emb`` if absent.

    Returns True when the checkpoint was a plain Moshi one and was upgraded.
    """
    expected = {k: v.shape for k, v in model.state_dict().items()}
    upgraded = False
    if not any(k.startswith("oracle_emb.") for k in state):
        for key in [k for k in state if k.startswith("text_emb.")]:
            state["oracle_emb." + key.removeprefix("text_emb.")] = state[key].clone()
        upgraded = True
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:4])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown keys (e.g. {', '.join(unexpected[:4])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
    if problems:
        raise CheckpointError(
            f"{source}: the LM weights do not match config.json: "
            + ", ".join(problems)
            + ". Check that config.json belongs to these weights."
        )
    return upgraded


def _load_lm(
    info: moshi_loaders.CheckpointInfo, device: torch.device, dtype: torch.dtype
) -> tuple[OracleLMModel, bool]:
    lm_kwargs, lora = _prepare_lm_kwargs(info.lm_config)
    model = build_lm(lm_kwargs, device="meta", dtype=dtype)
    path = Path(info.moshi_weights)
    if path.suffix not in (".safetensors", ".sft", ".sfts"):
        raise CheckpointError(f"{path}: LM weights must be a safetensors file")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the LM weights ({exc})") from exc
    upgraded = check_and_upgrade_state(model, state, str(path))
    for key, value in state.items():
        if value.dtype.is_floating_point:
            state[key] = value.to(dtype)
    model.load_state_dict(state, assign=True)
    if upgraded:
        logger.info("%s has no oracle_emb: initialised it from text_emb (plain Moshi checkpoint)", path)
    if lora.get("lora"):
        if info.lora_weights is None:
            raise CheckpointError(
                f"{info.moshi_weights}: config.json enables LoRA but names no weights (lora_name)"
            )
        _check_lora_keys(model, Path(info.lora_weights))
        try:
            model = moshi_loaders.get_lora_moshi(  # type: ignore[assignment]
                model,
                lora_weights=info.lora_weights,
                lora_rank=lora.get("lora_rank", 128),
                lora_scaling=lora.get("lora_scaling", 2.0),
                device=device,
                dtype=dtype,
                fuse_lora=True,
            )
        except RuntimeError as exc:
            raise CheckpointError(f"{info.lora_weights}: LoRA weights do not fit this model ({exc})") from exc
    elif info.lora_weights is not None:
        raise CheckpointError(
            f"LoRA weights {info.lora_weights} were given but config.json does not enable LoRA "
            '("lora": true, "lora_rank", "lora_scaling")'
        )
    model.to(device)
    model.eval()
    return model, upgraded


def _check_lora_keys(model: OracleLMModel, path: Path) -> None:
    """Every linear layer needs its two LoRA matrices; besides them the file may hold tensors trained
    fully beside the adapters (the oracle embedding, other embeddings, norms), which replace the base's.
    A linear layer's own weight may not be in it (that is a merged checkpoint, not an adapter)."""
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    expected = {f"{name}.{part}.weight" for name in linears for part in ("lora_A", "lora_B")}
    full = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.rpartition(".")[0] not in linears}
    try:
        with safe_open(str(path), framework="pt") as handle:
            present = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the LoRA weights ({exc})") from exc
    missing = sorted(expected - set(present))
    unknown = sorted(set(present) - expected - set(full))
    mismatched = [
        f"{k}: {present[k]} vs model {full[k]}"
        for k in sorted(set(present) & set(full))
        if present[k] != full[k]
    ]
    if missing or unknown or mismatched:
        raise CheckpointError(
            f"{path}: LoRA weights do not match the model: {len(missing)} missing "
            f"(e.g. {', '.join(missing[:3])}), {len(unknown)} unknown (e.g. {', '.join(unknown[:3])})"
            + (
                f", {len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:2])})"
                if mismatched
                else ""
            )
        )


def load_tokenizer(path: str | Path, text_card: int) -> sentencepiece.SentencePieceProcessor:
    """Load the SentencePiece model and check that it is the one the LM was trained with."""
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from exc
    if sp.get_piece_size() != text_card:
        raise CheckpointError(
            f"{path}: the tokenizer has {sp.get_piece_size()} pieces but the LM's text_card is {text_card}; "
            "this tokenizer belongs to another model"
        )
    return sp


def _load_mimi(info: moshi_loaders.CheckpointInfo, device: torch.device) -> MimiModel:
    try:
        return info.get_mimi(device=device)
    except (RuntimeError, KeyError, OSError) as exc:
        raise CheckpointError(
            f"{info.mimi_weights}: Mimi weights do not match the Mimi config ({exc})"
        ) from exc


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPUs (as released), float32 on CPUs where bf16 matmuls are slow."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


TINY_DEFAULT_ASSET = "assets/tiny_default"
TINY_DEFAULT_RECIPE = "scripts/train_tiny_default.py --work DIR --install"


def tiny_checkpoint_path() -> Path:
    """Where ``--frontend tiny`` lives: the trained tiny front-end shipped in the package."""
    return Path(str(resources.files("kame.frontend").joinpath(TINY_DEFAULT_ASSET)))


def ensure_tiny_checkpoint() -> Path:
    """The shipped tiny front-end's folder; an error (never random weights) if the install lacks it."""
    folder = tiny_checkpoint_path()
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(
            f"the shipped tiny front-end is missing ({folder} has no {CONFIG_NAME}): reinstall kame, or "
            f"rebuild it with `python {TINY_DEFAULT_RECIPE}`. For random tiny weights use --frontend "
            "random:tiny, or write a random checkpoint with `kame checkpoint init --preset tiny DIR`."
        )
    return folder


def load_frontend(
    spec: str | Path = DEFAULT_FRONTEND,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    lora_weights: str | Path | None = None,
) -> Frontend:
    """Load a KAME (or plain Moshi, upgraded) front-end from a folder or ``hf://owner/name``.

    ``tiny`` names the shipped tiny front-end (``assets/tiny_default``, made by
    ``scripts/train_tiny_default.py``): trained with ``kame train`` to say what its oracles say, so its
    text stream follows the embedded back-end's answers on a CPU; its voice is noise, because no codec
    weights are available offline (its Mimi hears, but decodes nothing intelligible).
    ``random:PRESET`` (e.g. ``random:tiny``, ``random:moshi-7b``) builds a preset's shape with a random
    LM in memory, for tests and benchmarks (its Mimi: see ``preset_mimi``).
    """
    if str(spec) == "tiny":
        logger.info("--frontend tiny: the shipped tiny front-end (follows its oracles; its voice is noise)")
        spec = ensure_tiny_checkpoint()
    if str(spec).startswith("random:"):  # benchmarks: a preset's shape with random weights, in memory
        return random_frontend(str(spec).removeprefix("random:"), device=device, dtype=dtype)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    info = resolve_checkpoint(spec, lora_weights=lora_weights)
    lm, upgraded = _load_lm(info, device, dtype)
    tokenizer = load_tokenizer(info.tokenizer, lm.text_card)
    mimi = _load_mimi(info, device)
    lm_config, _ = _prepare_lm_kwargs(info.lm_config)
    return Frontend(lm, mimi, tokenizer, lm_config, dict(info.lm_gen_config), str(spec), upgraded)


def train_tiny_tokenizer(vocab_size: int = presets.TINY_TOKENIZER_SIZE) -> bytes:
    """Train a small SentencePiece model with moshi's special ids (0 unk, 1 bos, 2 eos, 3 pad)."""
    corpus = resources.files("kame.frontend").joinpath("assets/tiny_corpus.txt").read_text().splitlines()
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def preset_mimi(preset: str, device: torch.device | str = "cpu") -> MimiModel:
    """The Mimi of a preset when no codec weights are at hand.

    ``tiny``, ``tiny-wide``: the shipped hearing tiny Mimi (``kame.frontend.tiny_mimi``: random encoder
    and decoder, RVQ codebooks fitted to speech, so different speech gives different codes; its decoded
    audio is noise).
    Other presets: moshi's untrained Mimi with random centroids (zero-filled codebooks would map every
    frame to code 0), enough for speed measurements.
    """
    if preset in presets.TINY_FAMILY:
        return load_tiny_mimi(device)
    mimi = moshi_loaders.get_mimi(None, presets.mimi_config(preset), device=device, num_codebooks=8)
    for module in mimi.quantizer.modules():
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.data.normal_()
            module.cluster_usage.data.fill_(1.0)
            module._initialized.data.fill_(1.0)
    return mimi


def random_frontend(
    preset: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    tokenizer: sentencepiece.SentencePieceProcessor | None = None,
) -> Frontend:
    """An in-memory random front-end (e.g. the 7B shape for benchmarks, with no 15 GB file)."""
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    config = presets.lm_config(preset)
    if preset in presets.TINY_FAMILY:
        if tokenizer is None:
            tokenizer = sentencepiece.SentencePieceProcessor(model_proto=train_tiny_tokenizer())
        config["text_card"] = tokenizer.get_piece_size()
    with seeded(seed, device):  # the same weights for a seed, and the caller's random state untouched
        lm = build_lm(config, device=device, dtype=dtype).eval()
        mimi = preset_mimi(preset, device)
    return Frontend(lm, mimi, tokenizer, config, {}, f"random:{preset}")


def save_checkpoint(
    folder: str | Path,
    frontend: Frontend,
    tokenizer_proto: bytes,
    mimi_config: dict[str, Any] | None,
    files: dict[str, str] | None = None,
    lm_gen_config: dict[str, Any] | None = None,
    lm_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a front-end in the released layout: config.json, LM (with oracle_emb), Mimi, tokenizer.

    ``lm_state`` replaces ``frontend.lm.state_dict()`` (a sharded model's state gathered elsewhere)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(files or TINY_FILES)
    config: dict[str, Any] = {**files, "model_type": "moshi", **frontend.lm_config}
    if lm_gen_config:
        config["lm_gen_config"] = lm_gen_config
    if mimi_config is None:
        config.pop("mimi_config_name", None)
    else:
        (folder / files["mimi_config_name"]).write_text(json.dumps(mimi_config, indent=2))
    if lm_state is None:
        lm_state = {k: v.detach().contiguous().cpu() for k, v in frontend.lm.state_dict().items()}
    save_file(lm_state, str(folder / files["moshi_name"]))
    mimi_state = {k: v.detach().contiguous().cpu() for k, v in frontend.mimi.state_dict().items()}
    save_file(mimi_state, str(folder / files["mimi_name"]))
    (folder / files["tokenizer_name"]).write_bytes(tokenizer_proto)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return folder


def init_checkpoint(folder: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Create a random checkpoint in the released layout (the tiny one is what tests use): a random LM
    with the shipped hearing tiny Mimi (see ``preset_mimi``)."""
    if preset not in presets.TINY_FAMILY:
        raise CheckpointError(
            f"only the tiny presets ({', '.join(presets.TINY_FAMILY)}) are written to disk; {preset!r} is "
            "available in memory to benchmarks "
            "(kame.frontend.checkpoint.random_frontend) and real weights come from hf://SakanaAI/kame"
        )
    folder = Path(folder)
    if (folder / CONFIG_NAME).exists():
        raise CheckpointError(f"{folder} already holds a checkpoint; choose an empty folder")
    proto = train_tiny_tokenizer()
    tokenizer = sentencepiece.SentencePieceProcessor(model_proto=proto)
    frontend = random_frontend(preset, device="cpu", dtype=torch.float32, seed=seed, tokenizer=tokenizer)
    return save_checkpoint(folder, frontend, proto, presets.mimi_config(preset))


BASE_FILE_KEYS = ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name")


def base_file_keys(spec: str | Path) -> dict[str, str]:
    """config.json file keys that name a full checkpoint's files where they are (``hf://`` or
    ``file://``), for a checkpoint that adds to it (LoRA adapters) without copying 15 GB."""
    spec = str(spec)
    if spec == "tiny":
        spec = str(ensure_tiny_checkpoint())
    if _is_hf(spec):
        info = resolve_checkpoint(spec)
        prefix = "hf://" + spec.removeprefix("hf://") + "/"
    else:
        folder = Path(spec).resolve()
        info = resolve_checkpoint(folder)
        prefix = "file://" + str(folder) + "/"
    raw = info.raw_config or {}
    if raw.get("lora"):
        raise CheckpointError(
            f"{spec} is itself a LoRA checkpoint; merge it first (`kame checkpoint merge-lora {spec} DIR`) "
            "and start from DIR"
        )
    defaults = {
        "moshi_name": moshi_loaders.MOSHI_NAME,
        "mimi_name": moshi_loaders.MIMI_NAME,
        "tokenizer_name": moshi_loaders.TEXT_TOKENIZER_NAME,
        "mimi_config_name": None,
    }
    keys = {}
    for key in BASE_FILE_KEYS:
        value = raw.get(key, defaults[key])
        if value is not None:
            value = str(value)
            keys[key] = value if value.startswith(("hf://", "file://")) else prefix + value
    return keys


def _stored_dtype(path: Path) -> torch.dtype:
    with safe_open(str(path), framework="pt") as handle:
        kinds = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
        for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
            kind = kinds.get(handle.get_slice(key).get_dtype())
            if kind is not None:
                return kind
    return torch.float32


def merge_lora(source: str | Path, target: str | Path) -> Path:
    """Write a LoRA checkpoint (base + adapters + fully trained tensors) as a plain full checkpoint.

    The adapters are fused in float32 (W + scaling x B @ A, moshi's own ``replace_lora_with_linear``)
    and the weights stored in the base's dtype; Mimi and the tokenizer are copied, so the result stands
    alone.
    """
    info = resolve_checkpoint(source)
    _, lora = _prepare_lm_kwargs(info.lm_config)
    if not lora.get("lora"):
        raise CheckpointError(f"{source}: config.json does not enable LoRA; there is nothing to merge")
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise CheckpointError(
            f"{target} is not empty; choose a new or empty folder for the merged checkpoint"
        )
    dtype = _stored_dtype(Path(info.moshi_weights))
    frontend = load_frontend(source, device="cpu", dtype=torch.float32)
    if frontend.tokenizer is None:
        raise CheckpointError(f"{source}: no text tokenizer to copy")
    state = {
        k: (v.to(dtype) if v.dtype.is_floating_point else v).detach().contiguous()
        for k, v in frontend.lm.state_dict().items()
    }
    proto = frontend.tokenizer.serialized_model_proto()
    return save_checkpoint(
        target, frontend, proto, info.mimi_config, lm_gen_config=frontend.lm_gen_config, lm_state=state
    )
