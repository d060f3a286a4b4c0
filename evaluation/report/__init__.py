"""The benchmark report: run directories in, Markdown + one self-contained HTML + summary.json out.

``build_report(run_dirs, out_dir)`` for the report, ``write_summary(run_dir)`` for a run's
headline figures alone. The entry point is ``python -m pipelines.report``.
"""

from evaluation.report.build import build_report
from evaluation.report.summary import write_summary

__all__ = ["build_report", "write_summary"]
