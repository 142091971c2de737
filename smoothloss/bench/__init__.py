"""``python -m smoothloss bench``: smoothloss against each framework's own losses, in time and
peak memory.

* ``smoothloss.bench.dense``: label-smoothed cross-entropy on B×K logits, smoothloss against
  torch, optax and Keras (timings interleaved in one subprocess per framework, memory in a
  fresh subprocess per framework × implementation × size, torch's first call in a fresh
  subprocess per implementation), with its steps in ``smoothloss.bench.dense_steps`` and its
  summary, tables and plot in ``smoothloss.bench.dense_report``;
* ``smoothloss.bench.schedule``: TensorFlow, ε changing every step of an eager loop, smoothloss's
  XLA backward (its traces, the resident set, the step time) against Keras, each in a fresh
  subprocess;
* ``smoothloss.bench.checks``: torch and TensorFlow, a compiled step with smoothloss's
  run-time label check against the same step compiled without it, in one fresh subprocess
  per framework;
* ``smoothloss.bench.linear``: ``linear_cross_entropy(hidden, weight, labels)`` against
  ``cross_entropy(hidden @ weight.T, labels)`` (``--linear NxHxV``, ``--only-linear``), one
  fresh subprocess per run; also ``python -m smoothloss.bench.linear N H V [chunk]`` alone;
* ``smoothloss.bench.common``: what both share (the worker subprocess, the resident-set
  probes, logging and formatting);
* ``smoothloss.bench.cli``: the options, the ``--worker`` entry point of the subprocesses
  (``python -m smoothloss.bench --worker SPEC``) and the report: ``bench.json``,
  ``bench.md`` and ``bench.png`` in ``--out``, and with ``--docs PATH`` a Markdown page.

``python -m smoothloss bench --help`` lists the options; ``python -m smoothloss.bench`` is the
same command. Importing this package imports no framework and none of its modules.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m smoothloss bench`` with ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    from smoothloss.bench.cli import main as cli_main

    return cli_main(argv)
