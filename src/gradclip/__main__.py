"""``python -m gradclip``: command-line tools; ``python -m gradclip demo`` runs the demo."""

import sys

from gradclip.demo import main

if __name__ == "__main__":
    sys.exit(main())
