"""``python -m smoothloss.bench``: the same as ``python -m smoothloss bench`` (and the entry
point of the benchmark's worker subprocesses, ``--worker SPEC``)."""

import sys

from smoothloss.bench import main

sys.exit(main())
