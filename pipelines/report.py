"""Report stage: turn run directories into report.md, one self-contained report.html and summary.json.

``python -m pipelines.report runs/a`` writes the report into ``runs/a`` (and ``runs/a/summary.json``);
``python -m pipelines.report runs/a runs/b [--out DIR]`` compares the runs' methods side by side
(labelled ``<run>/<method>``) in ``DIR`` (default ``runs/a/compare``). The last line printed is the
HTML report's path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.report import build_report


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (runs/<name>)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: the run dir; for several runs <first>/compare)",
    )
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            parser.error(f"{run_dir} is not a directory")
    out = args.out or (
        args.run_dirs[0] if len(args.run_dirs) == 1 else args.run_dirs[0] / "compare"
    )
    paths = build_report(args.run_dirs, out)
    print(f"markdown: {paths['markdown']}")
    print(f"summary: {paths['summary']}")
    print(f"report: {paths['html']}", flush=True)
    return paths


if __name__ == "__main__":
    main()
