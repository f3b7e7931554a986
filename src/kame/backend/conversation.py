"""The conversation the oracle LLM sees: the user's turns as heard, and what the assistant actually said.

Transcripts from the STT build the user's turns (finals are kept, the newest partial completes the
current turn); the runtime reports the assistant's words as the front-end speaks them. The prompt sent
to the LLM is built from here, as chat roles or as one transcript.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kame.backend.llm.base import ChatMessage
from kame.backend.stt.base import Transcript

PromptFormat = Literal["chat", "transcript"]


@dataclass
class Turn:
    role: Literal["user", "assistant"]
    text: str


class Conversation:
    """Turns, the current partial, and how many user words and how much audio have been heard."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self.partial = ""  # the current utterance, not final yet
        self.final_words = 0  # user words in finals so far
        self.covered = 0.0  # audio covered by the newest transcript

    def hear(self, transcript: Transcript) -> bool:
        """Apply one transcript; returns whether it ended an utterance with words."""
        self.covered = max(self.covered, transcript.audio_t)
        if transcript.kind != "final":
            self.partial = transcript.text.strip()
            return False
        self.partial = ""
        if not transcript.text.strip():
            return False
        self.final_words += len(transcript.text.split())
        if self.turns and self.turns[-1].role == "user":
            self.turns[-1].text = join(self.turns[-1].text, transcript.text)
        else:
            self.turns.append(Turn("user", transcript.text.strip()))
        return True

    def add_assistant_text(self, text: str) -> None:
        """Words the assistant said, in order (a new assistant turn after the user spoke)."""
        if self.turns and self.turns[-1].role == "assistant":
            self.turns[-1].text = join(self.turns[-1].text, text)
        else:
            self.turns.append(Turn("assistant", text.strip()))

    @property
    def user_words(self) -> int:
        return self.final_words + len(self.partial.split())

    def user_text(self) -> str:
        """What the user is saying in the current turn (finals since the assistant spoke + partial)."""
        turn = self.turns[-1].text if self.turns and self.turns[-1].role == "user" else ""
        return join(turn, self.partial)

    def history(self, max_messages: int) -> list[Turn]:
        """Turns with the current user turn completed by the partial, the last ``max_messages`` + 1."""
        turns = [Turn(t.role, t.text) for t in self.turns]
        if self.partial:
            if turns and turns[-1].role == "user":
                turns[-1].text = join(turns[-1].text, self.partial)
            else:
                turns.append(Turn("user", self.partial))
        return turns[-(max_messages + 1) :] if max_messages else turns[-1:]

    def messages(
        self, system_prompt: str, prompt_format: PromptFormat, max_messages: int
    ) -> list[ChatMessage]:
        """The request for the LLM: the system prompt, then the turns as roles or as one transcript."""
        turns = self.history(max_messages)
        system = ChatMessage("system", system_prompt)
        if prompt_format == "transcript":
            lines = [f"{'user' if t.role == 'user' else 'assistant'}: {t.text}" for t in turns]
            content = "Conversation so far (the user may still be speaking):\n" + "\n".join(lines)
            return [system, ChatMessage("user", content)]
        while turns and turns[0].role != "user":  # chat templates want the user to speak first
            turns = turns[1:]
        return [system, *(ChatMessage(t.role, t.text) for t in turns)]


def join(a: str, b: str) -> str:
    a, b = a.strip(), b.strip()
    return f"{a} {b}" if a and b else a or b
