"""The analyst's command line: the course's (em_sales) with every option of the package, outputs
written all together or not at all, progress on stderr. python em_sales.py FILE [options] runs it
where the package is importable, and so does python -m em_sales_tools."""
import contextlib
import os
import sys
import threading
import time
import warnings

import numpy as np

from em_sales import (MAX_STARTS, Search, _api_check, _arguments, _check_outputs, _command, _escaped,
                      _float, _model, _parser, _penalty, _Refused, _whole_option, _written, segments_csv)
from em_sales_tools.analysis import Choice, _analyse, _check_share
from em_sales_tools.choice import HOLDOUT_FOLDS, HOLDOUT_KINDS
from em_sales_tools.covariates import COVARIATE_PENALTY
from em_sales_tools.files import LONG_COLUMNS, Source, _use_engine
from em_sales_tools.prices import DRAWS, MAX_CHANGE, Settings, _share, prices_csv
from em_sales_tools.report import report, store_rows

SLOW = 2.0        # seconds: progress lines start once a run has taken this long, and come this often
WATCH = 1.0       # seconds between the watcher's looks at a start still running
CSV_HELP = ("CSV file, wide (first column the price, then one column per store) or long (one row a store and week: "
            "columns store, week, sales, price) (default: data/example.csv, made by simulate.py)")


def outputs(parser):
    """The package's options among the outputs (em_sales._parser puts them after --segments-K)."""
    parser.add_argument("--plot", metavar="FILE.png", help="draw the chosen K (needs matplotlib)")


def options(parser, model):
    """The package's options of the model, and its groups (em_sales._parser: after --store-effects)."""
    model.add_argument("--x", nargs="+", default=[], metavar="COL",
                       help="further regressors of a long file, used as they are (not logged)")
    large = parser.add_argument_group("large panels")
    large.add_argument("--by", metavar="COL",
                       help="a long file's column (product, brand, category): each of its groups fitted on its own, "
                            "from one read, the machine's cores across groups (needs duckdb)")
    large.add_argument("--engine", choices=("spark",),
                       help="spark: --by's groups reduced and fitted on Spark (pyspark; README: Beyond one machine)")
    large.add_argument("--master", metavar="URL",
                       help="with --engine spark: the Spark master (default: the active session's, or local[*])")
    large.add_argument("--sums", action="store_true",
                       help="the file is a table of per-store sums (README: one SQL query writes it from any panel)")
    how_many = parser.add_argument_group("how many segments")
    how_many.add_argument("--holdout", action="store_true",
                          help=f"score held-out weeks for each K, beside one pooled regression and each store's own: "
                               f"{HOLDOUT_FOLDS} contiguous blocks of each store's weeks in time order")
    how_many.add_argument("--holdout-folds", choices=HOLDOUT_KINDS, default="blocks",
                          help="the holdout's folds: blocks (default), or weeks: single weeks drawn into folds "
                               "with --seed (autocorrelated neighbours then predict a held-out week)")
    how_many.add_argument("--bootstrap", type=_whole_option("--bootstrap", 1, MAX_STARTS), default=0, metavar="B",
                          help="a parametric bootstrap test of K against K + 1 with B simulated panels (99 is usual)")
    how_many.add_argument("--min-share", type=_api_check(lambda text: _check_share(_float(text))), metavar="S",
                          help="also name the best K whose every segment holds at least a share S of the stores")
    model.add_argument("--stores", metavar="FILE.csv",
                       help="a stores file: one row a store, a 'store' column holding the panel's store labels, "
                            "then store-level columns")
    model.add_argument("--predict", nargs=2, metavar=("NEW.csv", "OUT.csv"),
                       help="with --covariates: new stores (a stores file) and the CSV to write their segment "
                            "probabilities to, from their covariates alone (the K of --segments-K, or BIC's)")
    model.add_argument("--covariates", nargs="+", default=[], metavar="COL",
                       help="columns of --stores that enter the model of membership: Pr[store in segment c] "
                            "depends on them (a multinomial logit)")
    model.add_argument("--covariate-penalty", type=_api_check(lambda text: _penalty(_float(text), "--covariate-penalty")),
                       default=0.0, metavar="L",
                       help="a ridge on the covariates' gamma, L per sd of each (0: none, maximum likelihood; "
                            f"{COVARIATE_PENALTY:g} is a N(0, 1) prior on each log-odds per sd): a finite fit where "
                            "the covariates separate a segment")
    names = parser.add_argument_group("columns of a long file (found by their header otherwise)")
    for role in LONG_COLUMNS:
        names.add_argument(f"--{role}", metavar="COL", help=f"the {role} column")
    prices = parser.add_argument_group("prices (for the K of --segments-K, or BIC's)")
    prices.add_argument("--cost", metavar="COL", help="a long file's column of unit cost, in the price's unit")
    prices.add_argument("--margin", metavar="COL", help="... or of gross margin, percent of the price "
                                                         "(cost = price x (1 - margin / 100))")
    prices.add_argument("--zones", metavar="FILE.csv", help="each store's zone (a store column and --zone's): one "
                                                           "change a zone, beside one a segment and one a store")
    prices.add_argument("--zone", metavar="COL", default="zone", help="the zones file's column (default zone)")
    prices.add_argument("--max-change", type=_api_check(lambda text: _share(_float(text))), default=MAX_CHANGE,
                        metavar="F", help=f"every price within this share of the store's regular price "
                                          f"(default {MAX_CHANGE:g})")
    prices.add_argument("--hold-average-price", action="store_true",
                        help="keep the chain's average price (weighted by today's expected sales) at today's")
    prices.add_argument("--draws", type=_whole_option("--draws", 0, 100_000), default=DRAWS, metavar="B",
                        help=f"draws of the parameters and segments for the intervals (default {DRAWS}; 0 none)")
    prices.add_argument("--prices", metavar="FILE.csv", help="each store's regular price, cost and the price of each "
                                                           "policy")


def _checked(argv):
    """Parsed and checked arguments (em_sales._arguments, then the package's), or _Refused."""
    args = _arguments(_parser(sys.modules[__name__]), argv)
    if args.by is not None and (args.segments or args.plot or args.predict or args.stores or args.sums):
        raise _Refused("--by writes results.json and the report for each group; --segments, --plot, --predict, "
                       "--stores and --sums are for one panel")
    if args.sums and (args.holdout or args.x or args.stores):
        raise _Refused("--sums reads a table of per-store sums: --holdout needs the weeks themselves, and --x and "
                       "--stores do not apply (the table's columns are the regressors)")
    if args.predict and not args.covariates:
        raise _Refused("--predict needs --stores and --covariates: new stores are placed by their covariates")
    if bool(args.stores) != bool(args.covariates):
        raise _Refused("--stores FILE.csv and --covariates COL ... go together: the file, and which of its "
                       "columns enter the model of membership")
    if args.covariate_penalty and not args.covariates:
        raise _Refused("--covariate-penalty L is a ridge on the gamma of covariates of membership: give --stores "
                       "FILE.csv and --covariates COL ... too")
    args.pricing = args.cost is not None or args.margin is not None
    if args.engine == "spark" and (args.by is None or args.holdout or args.pricing):
        raise _Refused("--engine spark fits the groups of --by from per-store sums; --holdout and prices need each "
                       "week of the panel: run them with --by on one machine")
    if args.holdout_folds != "blocks" and not args.holdout:
        raise _Refused("--holdout-folds sets the folds of --holdout")
    if args.master and args.engine != "spark":
        raise _Refused("--master URL names the Spark master of --engine spark")
    if args.cost is not None and args.margin is not None:
        raise _Refused("--cost COL and --margin COL each give the unit cost: one of them")
    if not args.pricing and (args.prices or args.zones or args.hold_average_price):
        raise _Refused("--prices, --zones and --hold-average-price set prices, which need the unit cost: --cost COL or "
                       "--margin COL")
    if args.pricing and args.sums:
        raise _Refused("prices need the panel's weeks (its prices and costs), not a table of sums (--sums)")
    if args.segments_K is not None and not (args.segments or args.plot or args.pricing):
        raise _Refused("--segments-K needs --segments FILE.csv, --plot FILE.png or prices (--cost, --margin)")
    if args.plot:
        from em_sales_tools.plot import _extension, _pyplot
        _pyplot()                                # to say now, not after the work, that it is missing
    _check_outputs([args.path] + [name for name in (args.stores, args.predict and args.predict[0], args.zones) if name],
                   [(flag, path) for flag, path in (("--output", args.output), ("--segments", args.segments),
                                                    ("--plot", args.plot), ("--prices", args.prices)) if path is not None]
                   + ([("--predict", args.predict[1])] if args.predict else []))
    if args.plot and _extension(args.plot) is None:
        raise _Refused(f"--plot {args.plot}: the picture is written as PNG, PDF or SVG: name the file .png, .pdf or .svg")
    return args


def main(argv=None):
    """The command line (python em_sales.py --help, or python -m em_sales_tools --help); the exit
    code, as em_sales.main says."""
    return _command(_main, argv)


def _main(argv, step):
    args = _checked(argv)
    if args.engine == "spark":
        return _spark(args, step)
    if not args.quiet and os.path.isfile(args.path) and (args.by or (not args.sums and _use_engine(args.path, {}))):
        print(f"reading {_escaped(args.path)} ({os.path.getsize(args.path) / 2 ** 20:.0f} MB): DuckDB reduces it to "
              "per-store sums", file=sys.stderr, flush=True)
    step.now = f"reading {_escaped(args.path)}"
    progress = _Progress(args.quiet, step)
    source = Source(args.path, {role: getattr(args, role) for role in LONG_COLUMNS}, tuple(args.x), args.by, args.sums)
    with warnings.catch_warnings(), contextlib.closing(progress):
        warnings.showwarning = lambda message, *rest, **named: print(f"warning: {_escaped(message)}", file=sys.stderr)
        with np.errstate(all="ignore"):
            pricing = Settings(args.cost, args.margin, args.zones, args.zone, args.max_change, args.hold_average_price,
                               args.draws, args.seed, args.segments_K) if args.pricing else None
            results, fits, data, table = _analyse(source, args.K, _model(args.sigma, args.store_effects, args.covariates,
                                                                                 args.covariate_penalty),
                                                  Search(args.n_init, args.seed, args.tol),
                                                  Choice(args.holdout and args.holdout_folds, args.bootstrap,
                                                         args.min_share), args.stores,
                                                  progress, args.csv or "data/example.csv", pricing)
    every = list(results["groups"].values()) if "groups" in results else [results]
    if not all(np.isfinite(model["loglik"]) for each in every for model in each.get("models", ())):
        raise _Refused(f"{_escaped(args.path)}: the estimates are not finite numbers (values too extreme to fit)")
    step.now = "writing the outputs"
    K = args.segments_K or results.get("best_K")
    more = [(args.segments, lambda: segments_csv(data.stores, fits[K].W, fits[K]))]
    if args.predict:
        from em_sales_tools.covariates import _predictions_csv
        more.append((args.predict[1], lambda: _predictions_csv(fits[K], args.predict[0])))
    if args.plot:
        more.append((args.plot, lambda: _picture(results, fits, data, K, args.plot)))
    if args.prices:
        more.append((args.prices, lambda: prices_csv(table, args.by)))
    return _written(args, results, more, report(results), store_rows)


def _spark(args, step):
    """--by --engine spark: the groups reduced and fitted on Spark; the report and results.json as
    --by's."""
    from em_sales_tools import spark
    step.now = "starting Spark"
    if not args.quiet:
        print(f"reading {_escaped(args.path)} with Spark: per-store sums, then each group of {args.by} fitted on its "
              "executors", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest, **named: print(f"warning: {_escaped(message)}", file=sys.stderr)
        step.now = "fitting the groups on Spark"
        results = spark.analyse_groups(args.path, args.K, _model(args.sigma, args.store_effects),
                                       Search(args.n_init, args.seed, args.tol), Choice(False, args.bootstrap, args.min_share),
                                       tuple(args.x), {role: getattr(args, role) for role in LONG_COLUMNS}, args.by,
                                       args.master, args.csv or "data/example.csv")
    every = list(results["groups"].values())
    if not all(np.isfinite(model["loglik"]) for each in every for model in each.get("models", ())):
        raise _Refused(f"{_escaped(args.path)}: the estimates are not finite numbers (values too extreme to fit)")
    step.now = "writing the outputs"
    return _written(args, results, [], report(results), store_rows)


def _picture(results, fits, data, K, path):
    from em_sales_tools.plot import _extension, plot
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plot(results, fits, data, K, _extension(path))


class _Progress:
    """progress(Progress) for a run: a line on stderr every 2 s once it is slow, with the time left
    for this K's starts (or a test's panels) at the pace so far; a round of split-and-merge moves;
    the percent of a large file reduced. A start that takes longer than its predecessors is
    reported while it runs, and the time left grows with it: a line every 2 s from a watcher
    thread, which close() stops. step.now names the work (for a message if the program fails)."""

    def __init__(self, quiet, step=None):
        self.quiet, self.step, self.clock = quiet, step, time.perf_counter
        self.start = self.last = self.clock()
        self.first, self.rounds, self.state = {}, {}, None      # a count's (time, done) at its first report
        self.done = threading.Event()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        if not quiet:
            self.watcher.start()

    def __call__(self, event):
        now = self.clock()
        label = event.what or ("reading" if event.kind == "reading" else f"K = {event.K}")
        if self.step is not None and event.kind != "reading":
            self.step.now = event.what or f"fitting K = {event.K}"
        if event.kind == "stage":                # a stage of the work: named for a failure, not printed
            self.state = None
            return
        if event.kind == "moves":
            self.rounds[event.K] = self.rounds.get(event.K, 0) + 1
            self.state = None
            self._say(now, label, f"split-and-merge moves, round {self.rounds[event.K]}")
            return
        if event.kind == "reading":
            self._say(now, label, f"{event.done:.0f}% of the file reduced")
            return
        unit = "panels" if event.kind == "panels" else "starts"
        since, before = self.first.setdefault(label, (now, event.done))
        self.state = (label, event.done, event.total, unit, since, before, now)
        self._say(now, label, self._line(now), final=event.done == event.total)

    def _line(self, now):
        """The state's line: done of total, and the time left at the pace so far, or at the pace of
        the start running now where it is slower."""
        label, done, total, unit, since, before, finished = self.state
        left = ""
        if before < done < total:
            pace = (finished - since) / (done - before)
            running = now - finished
            left = (f", about {pace * (total - done) - running:.0f} s left for its {unit}" if running <= pace else
                    f"; the one running now has taken {running:.0f} s, the others {pace:.0f} s each: at least "
                    f"{running * (total - done - 1):.0f} s more after it")
        return f"{done} of {total} {unit} done{left}"

    def _say(self, now, label, what, final=False):
        if not self.quiet and now - self.start > SLOW and (now - self.last > SLOW or final):
            print(f"{label}: {what}, {now - self.start:.1f} s", file=sys.stderr, flush=True)
            self.last = now

    def _watch(self):
        while not self.done.wait(WATCH):
            state, now = self.state, self.clock()
            if state is not None and state[1] < state[2] and now - self.last > SLOW:
                self._say(now, state[0], self._line(now))

    def close(self):
        self.done.set()
