"""``python -m benchmarks.workers.offload_block_times BLOCKS_FILE <lm_eval arguments>``: lm-eval's own CLI, with the
time each decoder block's compression ends appended to BLOCKS_FILE (``<block> <unix time>`` per line) and the time
the compression starts in BLOCKS_FILE with suffix ``.start`` (used by ``bench_offload_memory.py`` to split its
RssAnon samples per block). The blocks are seen by a forward pre-hook-free wrapper of
:func:`kick_models.compress.placement.onloaded`, which the sequential driver enters once per block."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path


def main() -> int:
    blocks_file = Path(sys.argv[1])
    sys.argv = ["lm_eval", *sys.argv[2:]]
    from kick_models.compress import placement

    original = placement.onloaded
    count = [0]

    @contextlib.contextmanager
    def timed(layer, *args, **kwargs):
        if count[0] == 0:
            blocks_file.with_suffix(".start").write_text(json.dumps({"t": time.time()}))
        with original(layer, *args, **kwargs):
            yield
        if kwargs.get("write_back", True) and kwargs.get("prefix"):
            with blocks_file.open("a") as f:
                f.write(f"{count[0]} {time.time()}\n")
            count[0] += 1

    placement.onloaded = timed
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
