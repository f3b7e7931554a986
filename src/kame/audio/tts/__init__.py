"""Speech synthesis with word times (Piper, espeak-ng, ...): one module per engine, chosen by spec."""
