"""What the package's tests share: the estimator's test helpers (test_em_sales.py) and a command
line case that runs the whole command line, the package's options included."""
import contextlib
import unittest

import em_sales as E
import em_sales_tools as T
import simulate as S
from test_em_sales import (COURSE_DATA, GAMMA, GOOD, HERE, ORANGE_JUICE, CommandLineCase as EstimatorCommandLineCase,
                           covariate_panel, data_file, model_stats, quietly, real_panel, small_panel, stats_of)

__all__ = ["E", "T", "S", "COURSE_DATA", "GAMMA", "GOOD", "HERE", "ORANGE_JUICE", "CommandLineCase", "covariate_panel",
           "data_file", "model_stats", "quietly", "real_panel", "small_panel", "stats_of", "needs_duckdb", "pd_or_skip"]


class CommandLineCase(EstimatorCommandLineCase):
    """main() in-process as the repository runs it: the package's command line."""

    def command_line(self):
        return contextlib.nullcontext()

    PLOT_REFUSED = None                      # the package's command line draws the picture


def needs_duckdb(test):
    """Skip a test where duckdb is not installed (the engine's path)."""
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return unittest.skip("duckdb is not installed")(test)
    return test


def pd_or_skip(case):
    try:
        import pandas
    except ImportError:
        case.skipTest("pandas is not installed")
    return pandas


