"""`python -m benchmarks ...` is `fastgan bench ...`."""
import sys

from fastgan.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
