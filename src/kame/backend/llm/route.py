"""``route:FILE.yaml``: a back-end per category of question, as the paper suggests (claude was stronger
on reasoning, gpt-4.1 on humanities).

The file::

    classifier: local                 # an LLM spec; the embedded model by default
    min_words: 6                      # classify once the turn's partial transcript has this many words
    default: openai:gpt-4.1           # before that, and when the classifier fails
    categories:
      reasoning: {description: logic puzzles and step-by-step problems, llm: anthropic:claude-opus-4-1}
      humanities: {description: history, literature, philosophy, llm: openai:gpt-4.1}

Each user turn is classified once, when its partial transcript first reaches ``min_words``; earlier
requests of that turn go to ``default``. The embedded classifier is constrained by a grammar to answer
with a category name; a remote one's answer is read for the first category name it contains. Providers
named by the same spec are shared. ``bind(record)`` gives a session its own view (its own turns), whose
choices are reported through ``record(category, llm=SPEC, user_words=N)``, which the runtime records on
the session's timeline as ``llm_route``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from pathlib import Path

from kame.backend.llm.base import ChatMessage, LLMError, LLMProvider
from kame.backend.llm.options import LLMOptions, LLMSpecError

RouteRecorder = Callable[..., None]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class RouteCategory:
    name: str
    description: str
    llm: str


@dataclass(frozen=True)
class RouteConfig:
    classifier: str
    default: str
    categories: tuple[RouteCategory, ...]
    min_words: int = 6

    @classmethod
    def read(cls, path: str | Path) -> RouteConfig:
        import yaml

        path = Path(path).expanduser()
        if not path.is_file():
            raise LLMSpecError(f"route:{path}: no such routing file (YAML: classifier, categories, default)")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise LLMSpecError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise LLMSpecError(f"{path}: the routing file must be a mapping")
        unknown = sorted(set(raw) - {"classifier", "default", "categories", "min_words"})
        if unknown:
            raise LLMSpecError(
                f"{path}: unknown key(s) {', '.join(unknown)}; use classifier, categories, default, min_words"
            )
        if not raw.get("default") or not isinstance(raw.get("categories"), dict) or not raw["categories"]:
            raise LLMSpecError(
                f"{path}: give 'default: LLM_SPEC' and 'categories: {{NAME: {{description, llm}}}}'"
            )
        categories = []
        for name, entry in raw["categories"].items():
            if not _NAME.match(str(name)):
                raise LLMSpecError(f"{path}: category name {name!r} must be a word (letters, digits, - or _)")
            if not isinstance(entry, dict) or not entry.get("description") or not entry.get("llm"):
                raise LLMSpecError(f"{path}: category {name!r} needs 'description' and 'llm'")
            categories.append(RouteCategory(str(name), str(entry["description"]), str(entry["llm"])))
        min_words = raw.get("min_words", 6)
        if not isinstance(min_words, int) or min_words < 1:
            raise LLMSpecError(f"{path}: min_words must be a whole number of words, 1 or more")
        return cls(str(raw.get("classifier") or "local"), str(raw["default"]), tuple(categories), min_words)


def classifier_messages(config: RouteConfig, text: str) -> list[ChatMessage]:
    listing = "\n".join(f"- {c.name}: {c.description}" for c in config.categories)
    return [
        ChatMessage(
            "system",
            "Classify the user's request into exactly one of these categories. "
            f"Answer with the category name only.\n{listing}",
        ),
        ChatMessage("user", text),
    ]


def category_grammar(config: RouteConfig) -> str:
    return "root ::= " + " | ".join(f'"{c.name}"' for c in config.categories)


def parse_category(config: RouteConfig, answer: str) -> RouteCategory | None:
    """The category whose name the classifier's answer mentions first (case-insensitive)."""
    lowered = answer.lower()
    found = [(lowered.find(c.name.lower()), c) for c in config.categories if c.name.lower() in lowered]
    return min(found, key=lambda item: item[0])[1] if found else None


class RoutingLLM(LLMProvider):
    name = "route"

    def __init__(
        self, path: str | Path, options: LLMOptions | None = None, *, config: RouteConfig | None = None
    ):
        from kame.backend.llm.options import parse_spec
        from kame.backend.llm.registry import create_llm

        self.config = config or RouteConfig.read(path)
        base = options or LLMOptions()
        shared = {f.name: getattr(base, f.name) for f in fields(LLMOptions)
                  if f.name in ("timeout", "retries", "backoff", "threads", "context", "seed")}  # fmt: skip
        specs = {self.config.default, *(c.llm for c in self.config.categories)}
        for spec in specs:
            if parse_spec(spec).provider == "route":
                raise LLMSpecError(f"{path}: a route cannot lead to another route ({spec})")
        self.providers: dict[str, LLMProvider] = {spec: create_llm(spec, **shared) for spec in sorted(specs)}
        constrained = parse_spec(self.config.classifier).provider == "local"
        self.classifier = create_llm(
            self.config.classifier, **shared,
            **({"grammar": category_grammar(self.config), "reuse_prompt": False} if constrained else {}),
        )  # fmt: skip
        self._record: RouteRecorder | None = None
        self._choices: dict[tuple, asyncio.Future[RouteCategory | None]] = {}

    def bind(self, record: RouteRecorder | None) -> RoutingLLM:
        """A view for one session: the same providers, its own turns, its choices sent to ``record``."""
        view = object.__new__(RoutingLLM)
        view.__dict__.update(self.__dict__)
        view._record, view._choices = record, {}
        return view

    async def choose(self, messages: list[ChatMessage]) -> str:
        """The spec of the provider for this request (classifying the turn once it has enough words)."""
        last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
        if last is None:
            return self.config.default
        text = messages[last].content  # the user's current turn (the assistant may have spoken since)
        words = len(text.split())
        turn = tuple(
            (m.role, m.content) for m in messages[:last] if m.role != "system"
        )  # the history before it
        future = self._choices.get(turn)
        if future is None:
            if words < self.config.min_words:
                return self.config.default
            future = self._choices[turn] = asyncio.get_running_loop().create_future()
            category = await self._classify(text)
            future.set_result(category)
            if self._record is not None:
                chosen = category.llm if category else self.config.default
                self._record(category.name if category else None, llm=chosen, user_words=words)
        category = await asyncio.shield(future)
        return category.llm if category else self.config.default

    async def _classify(self, text: str) -> RouteCategory | None:
        try:
            answer = await self.classifier.complete(
                classifier_messages(self.config, text), max_tokens=16, temperature=0.0
            )
        except LLMError:
            return None
        return parse_category(self.config, answer)

    async def stream_chat(
        self, messages: list[ChatMessage], *, max_tokens: int = 96, temperature: float = 0.3
    ) -> AsyncIterator[str]:
        provider = self.providers[await self.choose(messages)]
        async for chunk in provider.stream_chat(messages, max_tokens=max_tokens, temperature=temperature):
            yield chunk

    async def aclose(self) -> None:
        if self._record is not None:
            return  # a session's view: the shared providers belong to the process-wide router
        for provider in (*self.providers.values(), self.classifier):
            await provider.aclose()
