"""`python -m rembert_fast.bench ...`: the same as `rembert-fast bench ...`."""

import sys

from rembert_fast.bench.cli import main

sys.exit(main())
