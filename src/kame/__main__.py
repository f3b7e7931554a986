import sys

from kame.cli import main

sys.exit(main())
