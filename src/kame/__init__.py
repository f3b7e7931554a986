"""KAME: a tandem speech-to-speech system.

A full-duplex front-end (Moshi with an oracle input stream) speaks every 80 ms while an asynchronous
back-end (streaming STT + any LLM) streams candidate answers, oracles, into it.
"""

__version__ = "0.1.0"
