"""``python -m benchmarks [--quick] [--json FILE] [--goals LIST]``."""

import sys

from benchmarks.run import main

if __name__ == "__main__":
    sys.exit(main())
