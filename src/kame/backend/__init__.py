"""The back-end: streaming speech-to-text and any LLM, turned into a live oracle stream."""
