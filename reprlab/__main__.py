"""``python -m reprlab`` is the ``reprlab`` command."""

import sys

from reprlab.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
