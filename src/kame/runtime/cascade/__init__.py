"""The cascade baseline (STT -> LLM -> TTS with turn detection and barge-in), run like a KAME session.

Modules: ``events`` (the timeline names), ``turns`` (end of turn, barge-in), ``chunks`` (speakable
chunks of the LLM's text), ``player`` (reply audio paced by the frame clock), ``pipeline`` (the session).
Import from them directly: this package imports nothing, so reading its event names stays cheap.
"""
