"""``python -m kame.train ...`` is ``kame train ...`` (the form torchrun launches)."""

import sys

from kame.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
