"""`python -m fastgan ...` is the `fastgan` command (also under torchrun)."""
import sys

from fastgan.cli import main

sys.exit(main())
