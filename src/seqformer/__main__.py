"""``python -m seqformer``: the command line, also for ``torchrun -m seqformer train ...``."""

import sys

from seqformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
