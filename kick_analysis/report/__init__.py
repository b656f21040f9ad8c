"""``kick report``: summary.csv, leaderboard.md and plots over any set of lm-eval results folders.

    kick report DIR [DIR ...] --out OUTDIR [--no-html] [--no-plots] [--resamples 2000] [--seed 0]

DIRs are walked recursively for lm-eval ``results_*.json`` (``kick sweep`` folders, plain
``lm_eval --output_path`` folders, any mix); a DIR without lm-eval output is skipped with a
warning naming it. Runs are grouped by base model (``pretrained`` + ``gguf_file`` + ``revision``);
in each group the uncompressed run (a kick class at sparsity 0, a ``kick sweep``'s dense config, or a
``--model hf`` checkpoint that ``kick inspect`` measures as plain float weights without zeros) is the
dense baseline every other run is scored against. ``--dense DIR`` names the baseline instead: every
other run (e.g. checkpoints compressed by llm-compressor, GPTQ/AWQ, a GGUF quant) is scored against it.
A run kick did not compress is labelled from what its checkpoint declares and holds (kick inspect:
format, measured bits per weight and zeros), never as dense because kick did not compress it.

Outputs in OUTDIR:

* ``summary.csv``: one row per config x task x metric (x filter): compression (method, target and
  measured sparsity, bits per weight, effective bits), value, stderr, dense value, percent of the
  dense score, and for each task's primary metric the paired columns of ``kick compare``
  (retention, gain, agreement, difference with bootstrap CI, McNemar p) when both runs logged samples.
* ``leaderboard.md``: one row per config: measured sparsity / bits per weight, each task's primary
  score with the percent of dense retained, perplexities (x dense), and retention / agreement /
  McNemar p; ``\u2020`` marks a difference significant at 5 %.
* PNG plots (needs matplotlib: ``pip install 'kick-eval[report]'``): per task score vs sparsity per
  pruning method (dense as a horizontal line); perplexity vs knowledge-task score; quantization vs
  pruning at equal compression (score vs effective bits per weight); retention vs sparsity.
* ``report.html`` (unless ``--no-html``): one self-contained interactive page (no network, no server, opens
  from ``file://``): the leaderboard sortable by any column and filterable by method / model / sparsity / bits /
  task, the plots, and a per-item view: for any config, the items its dense baseline got right and it lost (and
  the reverse), with the question, the reference answers and both models' outputs, filterable by task and text
  (needs ``--log_samples`` runs; the page says which configs lack them, and which dense baseline is missing).

Effective bits per weight (the x axis of the quantization-vs-pruning plot): dense = 16 (fp16
storage); pruning at sparsity s = 16 * (1 - s) + 1 (fp16 values of the kept weights plus a
1-bit-per-weight presence mask; the same for N:M); quantization = the ``bits_per_weight`` measured by
the compression report (weights plus group scales/zeros), else ``wbits + 32 / groupsize``.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from kick_analysis.report.collect import (DENSE_BITS, MASK_BITS, PPL_PREFERENCE, Entry, ReportError, collect,
                                          effective_bits, headline_metric, headline_tasks, is_perplexity)
from kick_analysis.report.html_page import write_html
from kick_analysis.report.plots import _pyplot, make_plots, short_label
from kick_analysis.report.tables import (CSV_COLUMNS, DAGGER, data_lines, leaderboard_markdown, leaderboard_table,
                                         summary_rows, write_csv)

__all__ = ["CSV_COLUMNS", "DAGGER", "DENSE_BITS", "MASK_BITS", "PPL_PREFERENCE", "Entry", "ReportError", "build_parser",
           "collect", "data_lines", "effective_bits", "headline_metric", "headline_tasks", "is_perplexity",
           "leaderboard_markdown", "leaderboard_table", "main", "make_plots", "short_label", "summary_rows",
           "write_csv", "write_html"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="lm-eval output folders (walked recursively)")
    p.add_argument("--out", required=True, help="folder for summary.csv, leaderboard.md, plots")
    p.add_argument("--no-html", dest="html", action="store_false", help="do not write report.html")
    p.add_argument("--html", dest="html", action="store_true", default=True,
                   help="write report.html (the default; kept for older scripts)")
    p.add_argument("--dense", action="append", default=[], metavar="DIR",
                   help="the dense baseline run(s): every other run is scored against it, whatever checkpoint it "
                        "loads (needed for checkpoints compressed elsewhere; repeatable)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the paired CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if not args.no_plots:
                _pyplot()  # fail early, before the work
            entries = collect(args.dirs, n_resamples=args.resamples, seed=args.seed, dense_dirs=args.dense)
            out.mkdir(parents=True, exist_ok=True)
            rows = summary_rows(entries)
            write_csv(rows, out / "summary.csv")
            md = leaderboard_markdown(entries)
            tmp = out / "leaderboard.md.tmp"
            tmp.write_text(md, encoding="utf-8")
            os.replace(tmp, out / "leaderboard.md")
            images = [] if args.no_plots else make_plots(entries, out)
            if args.html:
                write_html(entries, images, out / "report.html")
        except ReportError as exc:
            for w in caught:
                print(f"kick report: warning: {w.message}", file=sys.stderr)
            print(f"kick report: error: {exc}", file=sys.stderr)
            return 2
    for w in caught:
        if "matplotlib" in str(w.filename) or "Glyph" in str(w.message):
            continue
        print(f"kick report: warning: {w.message}", file=sys.stderr)
    print(md)
    print(f"kick report: {len(entries)} runs, {len(rows)} summary rows, {len(images)} plots -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
