"""kick_analysis: the study tools and the ``kick`` command line, on top of kick_models and kick_tasks.

* :mod:`kick_analysis.cli` - the ``kick`` command: dispatches each subcommand to its module.
* :mod:`kick_analysis.sweep` - ``kick sweep``: the compression grid, resumable, one lm-eval results folder per config.
* :mod:`kick_analysis.preflight` - the sweep's data check before any model loads.
* :mod:`kick_analysis.sweep_executors` - where a sweep's configs run (local processes or a Ray cluster).
* :mod:`kick_analysis.report` - ``kick report``: collect, tables/CSV, plots (one function per figure), HTML page.
* :mod:`kick_analysis.compare` - ``kick compare``: dense-relative retention, flips and McNemar between two runs.
* :mod:`kick_analysis.stats` - paired bootstrap CI and the exact McNemar test.
* :mod:`kick_analysis.results_io` - reading lm-eval results folders and samples files.
* :mod:`kick_analysis.demo` - ``kick demo`` with its embedded data excerpt (``demo_data/``).
"""
