"""`python -m latent_tune.data ...` (see latent_tune.data.cli)."""

import sys

from latent_tune.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
