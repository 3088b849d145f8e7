"""``python -m gradclip``: the command line (``python -m gradclip --help`` lists the commands)."""

import sys

from gradclip._cli import main

if __name__ == "__main__":
    sys.exit(main())
