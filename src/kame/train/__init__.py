"""``kame train``: fine-tune a KAME front-end on ``kame data build`` datasets with the oracle stream.

Modules, one job each: ``config`` (the options, YAML and flags), ``data`` (datasets into per-record frame
streams, Mimi codes from the cache), ``collate`` (crops, Simulated Oracle Augmentation, batches),
``losses`` (REFERENCE.md section 3), ``state`` (resumable state and the exported checkpoint) and
``loop`` (the training loop).
"""
