"""report.html responsiveness on a large synthetic study, in the system's headless Chromium (Playwright).

    python benchmarks/bench_report_page.py [--configs 40] [--qa 2000] [--mc 1000] [--repeats 5]

Builds an lm-eval-shaped sweep (a dense run + ``--configs`` compressed runs, each with a generation task of ``--qa``
items and a multiple-choice task of ``--mc`` items, all with samples files; each compressed config flips a seeded
random ~25-45 % of the items), runs ``kick report --no-plots`` on it and on a 2-config study (dense + 1, same items:
the baseline), then times in the browser, median of ``--repeats`` fresh page loads each: page load to ready, sorting
the leaderboard by a score column, toggling a method filter, switching the per-item view to another config, and a text
search over its items (each interaction timed in the page, layout included). Prints both sides and their ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser import HOW_TO_GET_IT, chromium, chromium_executable, open_page  # noqa: E402
from test_analysis_compare import gen_sample, mc_sample, write_run  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt")

TIMED = {
    "sort by score": """() => { const t = performance.now();
        [...document.querySelectorAll('#leaderboard th')].find(th => th.dataset.task).click();
        document.body.offsetHeight; return performance.now() - t; }""",
    "method filter": """() => { const t = performance.now();
        document.querySelector('#filters [data-filter=method] input:not([value=dense])').click();
        document.body.offsetHeight; return performance.now() - t; }""",
    "switch item config": """() => { const s = document.getElementById('items-config'); const t = performance.now();
        s.selectedIndex = s.options.length - 1; s.dispatchEvent(new Event('change'));
        document.body.offsetHeight; return performance.now() - t; }""",
    "show both + all tasks": """() => { const c = document.getElementById('items-change'); const t = performance.now();
        c.value = 'both'; c.dispatchEvent(new Event('change'));
        document.body.offsetHeight; return performance.now() - t; }""",
}
SEARCH = """async () => { const i = document.getElementById('items-search'); const t = performance.now();
    i.value = 'question 1'; i.dispatchEvent(new Event('input'));
    await new Promise(r => setTimeout(r, 130));  // the search waits 120 ms after the last key
    document.body.offsetHeight; return performance.now() - t - 120; }"""


def make_study(root: Path, n_configs: int, n_qa: int, n_mc: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "sweep.json").write_text('{"model": "bench", "configs": []}')
    dense_qa = {i for i in range(n_qa) if rng.random() < 0.5}
    dense_mc = {i for i in range(n_mc) if rng.random() < 0.6}

    def write(slug: str, model: str, args: dict, qa_right: set, mc_right: set) -> None:
        qa = [gen_sample(i, f"Answer {i}" if i in qa_right else f"{slug} says something else about item {i}",
                         f"Answer {i}", prompt=f"Question {i}: who wrote the {i}th entry of the benchmark list?",
                         metric="contains_em") for i in range(n_qa)]
        mc = [mc_sample(i, [-1.0, -2.0, -3.0, -4.0] if i in mc_right else [-2.0, -1.0, -3.0, -4.0], 0)
              for i in range(n_mc)]
        summary = {"kick_compression": {"config": {k: v for k, v in args.items() if k != "pretrained"},
                                        "measured_sparsity": args.get("sparsity", 0.0)}}
        write_run(root / slug / "bench", {"qa": qa, "mc": mc}, model=model, model_args=args,
                  extra_config=summary if model != "hf" else {}, output_types={"mc": "multiple_choice"})

    write("dense", "hf", {"pretrained": "bench"}, dense_qa, dense_mc)
    for k in range(n_configs):
        method, sparsity = METHODS[k % 3], round(0.1 + 0.6 * (k // 3) / max(1, (n_configs - 1) // 3), 3)
        flip = 0.25 + 0.2 * rng.random()
        qa = {i for i in range(n_qa) if (i in dense_qa) != (rng.random() < flip)}
        mc = {i for i in range(n_mc) if (i in dense_mc) != (rng.random() < flip)}
        write(f"{method}-{k:02d}", "kick-pruned", {"pretrained": "bench", "method": method, "sparsity": sparsity},
              qa, mc)
    return root


def measure(browser, page_file: Path, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        page = open_page(browser, page_file)
        times.setdefault("page load to ready", []).append(1000 * (time.perf_counter() - t0))
        for name, js in TIMED.items():
            times.setdefault(name, []).append(page.evaluate(js))
        times.setdefault("text search", []).append(page.evaluate(SEARCH))
        assert not page.errors, page.errors
        page.close()
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", type=int, default=40)
    p.add_argument("--qa", type=int, default=2000)
    p.add_argument("--mc", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    exe = chromium_executable()
    if exe is None:
        print(f"bench_report_page: {HOW_TO_GET_IT}", file=sys.stderr)
        return 2
    from kick_analysis import report

    with tempfile.TemporaryDirectory() as tmp:
        pages, builds = {}, {}
        for name, n in (("baseline (dense + 1)", 1), (f"large (dense + {args.configs})", args.configs)):
            study = make_study(Path(tmp) / f"study{n}", n, args.qa, args.mc)
            t0 = time.perf_counter()
            devnull = open(os.devnull, "w")
            stdout, sys.stdout = sys.stdout, devnull
            try:
                assert report.main([str(study), "--out", str(Path(tmp) / f"out{n}"), "--no-plots",
                                    "--resamples", "200"]) == 0
            finally:
                sys.stdout = stdout
                devnull.close()
            pages[name] = Path(tmp) / f"out{n}" / "report.html"
            builds[name] = (time.perf_counter() - t0, pages[name].stat().st_size / 1e6)
        with chromium(exe) as browser:
            results = {name: measure(browser, page, args.repeats) for name, page in pages.items()}
    base, large = list(results)
    print(f"report.html, {args.qa + args.mc} items per config ({args.qa} generation + {args.mc} multiple choice); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; median of {args.repeats}")
    for name in pages:
        print(f"  {name}: kick report {builds[name][0]:.1f} s, report.html {builds[name][1]:.2f} MB")
    print(f"  {'(ms)':<22} {base:>22} {large:>24} {'ratio':>7}")
    for key in results[base]:
        b, lg = results[base][key], results[large][key]
        print(f"  {key:<22} {b:>22.1f} {lg:>24.1f} {lg / b if b else float('nan'):>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
