"""Audio plumbing shared by every layer: file I/O, resampling, Opus and speech synthesis."""
