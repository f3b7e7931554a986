"""``route:FILE.yaml``: one classification per user turn, the chosen back-end answers, choices recorded."""

from __future__ import annotations

import pytest
from llm_servers import Record, Script, scripted_app, serve

from kame.backend.llm import ChatMessage, create_llm
from kame.backend.llm.options import LLMSpecError
from kame.backend.llm.route import RouteConfig, RoutingLLM, parse_category

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")


def write_routes(
    tmp_path, geography_llm: str, default_llm: str, classifier: str = "local", min_words: int = 5
):
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"classifier: {classifier}\nmin_words: {min_words}\ndefault: '{default_llm}'\ncategories:\n"
        f"  geography: {{description: countries, capitals, rivers and mountains, llm: '{geography_llm}'}}\n"
        f"  cooking: {{description: recipes, food and kitchens, llm: '{default_llm}'}}\n"
    )
    return path


def ask(text: str, history: tuple[str, ...] = ()) -> list[ChatMessage]:
    turns = [ChatMessage("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(history)]
    return [ChatMessage("system", "Answer briefly."), *turns, ChatMessage("user", text)]


def test_routing_files_are_checked(tmp_path):
    with pytest.raises(LLMSpecError, match="no such routing file"):
        create_llm(f"route:{tmp_path / 'none.yaml'}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: local\ncategories:\n  geography: {llm: local}\n")
    with pytest.raises(LLMSpecError, match="description"):
        RouteConfig.read(bad)
    bad.write_text("default: local\ncategories: {a: {description: x, llm: 'route:other.yaml'}}\n")
    with pytest.raises(LLMSpecError, match="another route"):
        create_llm(f"route:{bad}")


def test_remote_classifier_answers_are_read_for_a_category_name(tmp_path):
    config = RouteConfig.read(write_routes(tmp_path, "local", "local"))
    assert parse_category(config, "Category: Geography.").name == "geography"
    assert parse_category(config, "cooking, not geography").name == "cooking"  # the first one named
    assert parse_category(config, "I cannot tell") is None


def test_each_turn_is_classified_once_and_routed(tmp_path, run):
    async def scenario():
        record = Record()
        async with serve(scripted_app("openai", Script(chunks=["From ", "the ", "atlas."]), record)) as url:
            router = create_llm(
                f"route:{write_routes(tmp_path, f'openai:atlas@{url}/v1', 'local')}", threads=1
            )
            assert isinstance(router, RoutingLLM)
            choices: list[tuple] = []
            session = router.bind(lambda text, **fields: choices.append((text, fields)))
            early = await session.complete(ask("What is the capital"), max_tokens=8, temperature=0.0)
            long = ask("What is the capital city of France, please?")
            answers = [await session.complete(long, max_tokens=8, temperature=0.0) for _ in range(2)]
            again = await session.complete(
                ask("What is the capital city of France, please tell me?"), max_tokens=8
            )
            await router.aclose()
            return early, answers, again, choices, record

    early, answers, again, choices, record = run(scenario())
    assert "atlas" not in early  # under min_words: the default (the embedded model) answered
    assert len(choices) == 1  # one classification per turn, however many requests follow
    category, fields = choices[0]
    assert category in ("geography", "cooking") and fields["user_words"] == 8
    routed = fields["llm"].startswith("openai:")
    assert routed == (category == "geography")
    assert all(("atlas" in a) == routed for a in answers)
    assert len(record.requests) == (3 if routed else 0)  # every later request of the turn went there


def test_a_new_turn_is_classified_again_and_sessions_keep_their_own_turns(tmp_path, run):
    async def scenario():
        router = create_llm(f"route:{write_routes(tmp_path, 'local', 'local', min_words=2)}", threads=1)
        one, two = [], []
        first, second = router.bind(lambda t, **f: one.append(t)), router.bind(lambda t, **f: two.append(t))
        await first.choose(ask("Bake a cake"))
        await first.choose(ask("Where is Peru?", ("Bake a cake", "Mix flour and eggs.")))
        await second.choose(ask("Bake a cake"))
        await router.aclose()
        return one, two

    one, two = run(scenario())
    assert len(one) == 2 and len(two) == 1


def test_sessions_record_the_choice_on_their_timeline(tmp_path, run):
    from kame.backend.stt import create_stt
    from kame.runtime.backend import Backend
    from kame.timeline import Timeline

    async def scenario():
        router = create_llm(f"route:{write_routes(tmp_path, 'local', 'local', min_words=2)}", threads=1)
        backend = Backend(create_stt("pocketsphinx"), router)
        timeline = Timeline("s")
        session = backend.open_session("s", timeline, lambda event: None)
        spec = await session.engine.llm.choose(ask("Where is the river Nile?"))
        await backend.aclose()
        return spec, timeline.of_type("llm_route")

    spec, routes = run(scenario())
    assert len(routes) == 1 and routes[0]["text"] in ("geography", "cooking") and routes[0]["llm"] == spec


def test_the_shipped_routing_file_reads():
    from pathlib import Path

    config = RouteConfig.read(Path(__file__).parents[2] / "configs" / "route" / "paper.yaml")
    assert [c.name for c in config.categories] == ["reasoning", "stem", "humanities"]
    assert {c.llm for c in config.categories} == {"anthropic:claude-opus-4-1", "openai:gpt-4.1"}
