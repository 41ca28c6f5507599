"""``python -m dsh``: the command line (what torchrun runs with ``-m dsh``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
