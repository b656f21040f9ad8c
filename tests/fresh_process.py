"""Run one test's body in a fresh Python process: for measurements of the process's own memory (resident
high-water mark, RssAnon), which depend on what earlier tests left in the allocator of a long pytest process.

    def test_peak(request):
        if ran_in_fresh_process(request):
            return  # the body ran (and asserted) in its own process
        ...measure...
"""

from __future__ import annotations

import os
import subprocess
import sys

_ENV = "KICK_TEST_FRESH_PROCESS"


def ran_in_fresh_process(request, timeout: int = 900) -> bool:
    """False inside the fresh process (run the body); otherwise run this very test there, fail with its output if it
    fails, and return True."""
    nodeid = request.node.nodeid
    if os.environ.get(_ENV) == nodeid:
        return False
    env = dict(os.environ, **{_ENV: nodeid})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
                          cwd=str(request.config.rootpath), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{nodeid} in a fresh process:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return True
