"""Regenerate docs/report_page.png (the README's picture of report.html) from the committed study's page.

    python scripts/report_screenshot.py [--page docs/studies/sweep_smollm2/report/report.html] [--config wanda-s10]

Opens the page in the system's headless Chromium (tests/browser.py), sorts the leaderboard by the knowledge score,
shows the per-item view of ``--config`` (lost and gained items), hides the plots section (they are the PNGs next to
the page) and writes a palette PNG under 300 KB.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import HOW_TO_GET_IT, chromium, chromium_executable, open_page  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--page", default=str(ROOT / "docs/studies/sweep_smollm2/report/report.html"))
    p.add_argument("--config", default="wanda-s10")
    p.add_argument("--out", default=str(ROOT / "docs/report_page.png"))
    args = p.parse_args(argv)
    exe = chromium_executable()
    if exe is None:
        print(f"report_screenshot: {HOW_TO_GET_IT}", file=sys.stderr)
        return 2
    from PIL import Image

    with chromium(exe) as browser:
        page = open_page(browser, Path(args.page), width=1200, height=900)
        page.add_style_tag(content="#plots, h2:has(+ #plots) {display: none}")
        page.click("#leaderboard th:text-is('kick_factoid_qa contains_em')")
        page.click("#leaderboard th:text-is('kick_factoid_qa contains_em')")
        page.uncheck("#filters [data-filter=method] input[value=magnitude]")
        page.select_option("#items-config", args.config)
        page.select_option("#items-change", "both")
        png = page.screenshot(full_page=True)
        assert not page.errors, page.errors
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {image.size[0]}x{image.size[1]}, {Path(args.out).stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
