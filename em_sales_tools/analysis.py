"""The analyst's analysis of a panel: read it (load: the exact reader, or DuckDB for large and
Parquet files, or a table of per-store sums), fit each K (em_sales.sweep), and gather results.json
with the diagnostics and model-choice tools of em_sales_tools.choice and the covariates of
membership of em_sales_tools.covariates; a fit with its panel (FrameFit, and fit_frame from
pandas); every group of a long file (--by) in worker processes."""
import os
import signal
import sys
import warnings
from typing import NamedTuple

import numpy as np

from em_sales import (CLUSTERED, MAX_STARTS, N_INIT, TOL, Fit, InputError, Progress, Search, _check_Ks, _diagnostic,
                      _escaped, _model, _names, _search, _shown_errors, _statistics, _warn, _whole, results,
                      sweep)
from em_sales import _model_summary as _course_summary
from em_sales_tools.choice import (HOLDOUT_FOLDS, HOLDOUT_KINDS, _autocorrelation, _bootstrap, _captured, _holdout, _not_credible,
                                   _own_regression, _sigma_check, _t_quantile, _verdict)
from em_sales_tools.covariates import _membership_summary, _penalised_summary, predict
from em_sales_tools.files import Folds, Source, _use_engine, read_exact, read_stores, read_sums
from em_sales_tools.prices import Inputs, _aligned, price_policies, read_zones, regular_weeks, regular_weeks_by
from em_sales_tools.report import _fit_lines, _membership_lines, _robust_lines, notes


class Choice(NamedTuple):
    """How many segments, beyond the criteria: holdout (score held-out weeks: False; "blocks",
    contiguous blocks of each store's weeks, or True; "weeks", single weeks drawn at random),
    bootstrap (B simulated panels a test of K against K + 1; 0: none), min_share (also the best K
    whose every segment holds at least this share of the stores)."""
    holdout: object = False
    bootstrap: int = 0
    min_share: float = None

    def checked(self):
        if self.holdout not in HOLDOUT_KINDS and not isinstance(self.holdout, bool):
            raise InputError(f"holdout must be False, True, 'blocks' or 'weeks'; got {self.holdout!r}")
        _whole(self.bootstrap, "bootstrap", 0, MAX_STARTS)
        _check_share(self.min_share)
        return self._replace(holdout="blocks" if self.holdout is True else self.holdout)

    def folds(self, seed):
        """The holdout's Folds, or None."""
        return Folds(HOLDOUT_FOLDS, seed, self.holdout != "weeks") if self.holdout else None


def _check_share(share):
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float))
                              or not 0 < share < 1):
        raise InputError(f"min_share must be a share of the stores between 0 and 1; got {share!r}")
    return share


# ---------------------------------------------------------------------------------------------
# The analyst's entries: analyse a file, load one, fit a DataFrame
# ---------------------------------------------------------------------------------------------

def analyse(path, Ks=(2, 3, 4), n_init=N_INIT, seed=0, tol=TOL, progress=None, name=None,
            sigma=1.0, store_effects=False, columns=None, x=(), stores=None, covariates=(),
            holdout=False, bootstrap=0, min_share=None, by=None, sums=False, prices=None, covariate_penalty=0.0):
    """Read a panel (a wide or long CSV file, a Parquet file, a DataFrame: see load; a table of
    per-store sums with sums=True), estimate each K and return the results.json dictionary, whose
    "data" is `name` (default: the path). Warns when the data reject a fixed sigma, when BIC picks
    the largest K tried and when a segment is not supported. progress(Progress), if given, hears
    of each K's starts and moves, of a large file's reading and of the bootstrap's panels.
    stores, covariates: a stores file and the names of its columns that are covariates of
    membership (read_stores); covariate_penalty L > 0: a ridge on their gamma, L per sd of each (a
    finite fit where they separate a segment; 0: maximum likelihood). How many segments: holdout
    (the predictive log-likelihood of held-out weeks), bootstrap B (a parametric bootstrap test of
    K against K + 1), min_share S (the best K whose every segment holds at least a share S of the
    stores). by: a long file's
    column whose groups are analysed each on its own ({"data", "by", "groups": {group: results}}).
    prices: a prices.Settings (cost or margin column, zones, max_change, ...): each policy's prices
    and gains in results["pricing"]."""
    source = Source(path, columns, tuple(_names(x, "x", path if isinstance(path, str) else "DataFrame")), by, sums)
    return _analyse(source, Ks, _model(sigma, store_effects, covariates, covariate_penalty), Search(n_init, seed, tol),
                    Choice(holdout, bootstrap, min_share).checked(), stores, progress, name,
                    prices.checked() if prices is not None else None).results


def load(path, columns=None, x=(), text=None, folds=0, seed=0, progress=None, blocks=True):
    """Read a wide or a long panel into a Loaded (stores, weeks, per-store sums, X's names, lags and
    holdout folds); the file is read once. A long CSV file larger than 64 MB and a Parquet file
    are reduced by DuckDB (em_sales_tools.engine), any other file by the exact reader
    (files.read_exact). columns: {role: name} for a long file's store, week, sales, price where
    not so called; x: its further regressors (a name or a list). path may be a pandas DataFrame
    in either layout (read as CSV text: a message's line n is its row n - 2). folds: also the
    Sums of that many folds of each store's weeks, for the holdout: contiguous blocks of its
    weeks in time order, or with blocks=False each week drawn into a fold with seed (Folds).
    progress(Progress("reading", ...)) hears of a large file's reduction every second."""
    return _load(path, columns, x, text, Folds(folds, seed, blocks) if folds else None, progress)


def _load(path, columns, x, text, folds, progress):
    """load, with the holdout's Folds (or None)."""
    if hasattr(path, "to_csv"):                  # a pandas DataFrame: the same reader, as CSV text
        path, text = "DataFrame", path.to_csv(index=False)
    columns = {role: name for role, name in (columns or {}).items() if name}
    x = _names(x, "x", path if isinstance(path, str) else "DataFrame")
    if text is None and _use_engine(path, columns):
        from em_sales_tools.engine import _engine_load                  # the path of large files only
        loaded = _engine_load(path, columns, x, folds, progress=_reading(progress))
        if loaded is not None:                   # else a file DuckDB cannot read and the exact reader can
            return loaded
    return read_exact(path, columns, x, text, folds)


def _reading(progress):
    """The engine's progress(percent) as progress(Progress("reading", percent, 100))."""
    return None if progress is None else lambda percent: progress(Progress("reading", done=percent, total=100))


def fit_frame(frame, K, store="store", week="week", sales="sales", price="price", x=(), stores=None,
              covariates=(), sigma="segment", store_effects=False, n_init=N_INIT, seed=0, tol=TOL, covariate_penalty=0.0):
    """The analyst's entry from pandas: a FrameFit with K segments of a long DataFrame (one row a
    store and week; the columns named by store, week, sales, price and the further regressors x),
    its coefficients named. stores: a DataFrame of store covariates (one row a store, its store
    column named as in frame, or its index the store), whose columns named in covariates enter
    the model of membership (covariate_penalty L > 0: a ridge on their gamma, as analyse's). sigma
    is per segment by default here (real panels reject a fixed sigma = 1; the course's functions
    keep it). The frames pass through the same reader as
    files, with the same checks; a message's line n is the frame's row n - 2."""
    for name, value in (("frame", frame), ("stores", stores)):
        if value is not None and not hasattr(value, "to_csv"):
            raise InputError(f"{name} must be a pandas DataFrame; got {type(value).__name__}")
    model = _model(sigma, store_effects, covariates, covariate_penalty)
    data = load(frame, dict(store=store, week=week, sales=sales, price=price), x)
    z = None
    if model.covariates:
        if stores is None:
            raise InputError("covariates need stores: a DataFrame with one row a store")
        table = stores if store in stores.columns else stores.rename_axis(store).reset_index()
        z = read_stores("stores DataFrame", data.stores, model.covariates, table.to_csv(index=False), store)
    stats = _statistics(data.sums, model, data.coefficients, z)
    fit = _search(stats, K, Search(n_init, seed, tol), names=[data.coefficients[j] for j in stats.columns])
    return FrameFit(fit, data, pandas=True)


class FrameFit(Fit):
    """A Fit with its panel, as analyse and fit_frame give it: stores (the labels), data (the
    Loaded); segment and posterior by store (a Series and a DataFrame from fit_frame), the
    residual autocorrelation within stores, predict (new stores' segments), plot, and a summary()
    with the analyst's lines (store-clustered standard errors, gamma and profiles)."""

    def __init__(self, fit, data, pandas=False):
        self.__dict__.update(vars(fit))
        self.stores, self.data, self._pandas = data.stores, data, pandas

    autocorrelation = property(lambda self: _autocorrelation(self, self.data.lags))

    @property
    def segment(self):
        """Each store's most likely segment, 1..K (a Series by store from fit_frame)."""
        return self._by_store(self.W.argmax(axis=1) + 1, None)

    @property
    def posterior(self):
        """W (N, K) (a DataFrame by store, columns segment_1..K, from fit_frame)."""
        return self._by_store(self.W, [f"segment_{c + 1}" for c in range(self.K)])

    def _by_store(self, values, columns):
        if not self._pandas:
            return values
        import pandas as pd
        index = pd.Index(self.stores, name="store")
        return pd.Series(values, index=index, name="segment") if columns is None else \
            pd.DataFrame(values, index=index, columns=columns)

    def predict(self, covariates=None, y=None, X=None):
        """Segments of new stores (covariates.predict): a Prediction of prior, posterior, segment."""
        return predict(self, covariates, y, X)

    def plot(self, file=None):
        """The picture of plot() for this fit (bytes: PNG, or PDF or SVG as file's name says;
        written to file if given)."""
        from em_sales_tools.plot import PICTURES, _extension, plot
        if file is not None and _extension(file) is None:
            raise InputError(f"{file}: a picture is written as {', '.join(PICTURES)}, by the file's extension")
        results = {"data": "fit", "settings": {"sigma": self.model.sigma if self.model.sigma != "fixed" else
                                                self.model.fixed, "store_effects": self.model.store_effects},
                   "models": [{"K": self.K, "bic": self.bic}], "best_K": self.K}
        picture = plot(results, {self.K: self}, self.data, self.K, _extension(file) or "png")
        if file is not None:
            with open(file, "wb") as out:
                out.write(picture)
        return picture

    def summary(self):
        """The report's table of this fit, with the analyst's lines."""
        model = _model_summary(self, self.data.lags)
        return "\n".join(_fit_lines(model, self.model.sigma != "fixed", _robust_lines(model) + _membership_lines(model)))


# ---------------------------------------------------------------------------------------------
# The analysis: a panel's fits and results.json
# ---------------------------------------------------------------------------------------------

class Analysis(NamedTuple):
    """An analysis of a panel: results (results.json's dictionary), fits ({K: FrameFit}), data (the
    Loaded), prices (each store's table of prices, where they were set; by group with --by)."""
    results: dict
    fits: dict
    data: object
    prices: object = None


def _analyse(source, Ks, model, search, choice, stores=None, progress=None, name=None, pricing=None):
    """analyse's work: an Analysis. With source.by, every group of the file analysed on its own
    (results {"data", "by", "groups": {group: results}}, no fits). pricing: the prices' Settings,
    or None."""
    if source.by is not None:
        return _analyse_groups(source, Ks, model, search, choice, progress, name, pricing)
    path = source.path
    if pricing is not None and source.sums:
        raise InputError(f"{_escaped(path)}: prices need the panel's weeks (its prices and costs), not a table of sums")
    if source.sums:
        data = read_sums(path)
    else:
        data = _load(path, source.named(), source.x, None, choice.folds(search.seed), progress)
    regular = None
    if pricing is not None:
        regular = (regular_weeks_by(path, source.x, pricing, source.named())[None] if _use_engine(path, source.named())
                   else regular_weeks(path, source.x, pricing, source.named()))
    return _analyse_data(data, Ks, model, search, choice, stores, name or ("DataFrame" if hasattr(path, "to_csv") else path),
                         progress, pricing and Inputs(pricing, regular))


def _analyse_data(data, Ks, model, search, choice, stores, name, progress=None, pricing=None):
    """The analysis of a Loaded panel: an Analysis. pricing: the prices' Inputs (settings and
    each store's regular week), or None."""
    shown = _escaped(name)
    if choice.holdout and data.folds is None:
        raise InputError(f"{shown}: --holdout needs the panel's weeks (not a table of sums)")
    if model.covariates and stores is None:
        raise InputError("covariates of membership need a stores file (--stores FILE.csv)")
    z = read_stores(stores, data.stores, model.covariates) if model.covariates else None
    try:
        stats = _statistics(data.sums, model, data.coefficients, z)
    except InputError as problem:
        raise InputError(f"{shown}: {problem}") from None
    _check_Ks(Ks, len(data.stores), f"the {len(data.stores)} stores in {shown}")
    fits = {K: FrameFit(fit, data) for K, fit in
            sweep(stats, Ks, search, [data.coefficients[j] for j in stats.columns], progress).items()}
    if progress:
        progress(Progress("stage", what="computing the diagnostics"))
    out = results(fits, data.stores, data.weeks, name, search, data.layout, lambda fit: _model_summary(fit, data.lags))
    segments = out.pop("store_segments")
    failed, best = {}, out["best_K"]
    out["own_regression"] = _diagnostic(failed, "stores' own regressions", lambda: _own_regression(
        stats, data.sums, data.stores, data.coefficients), None)
    if model.sigma == "fixed":
        out["sigma_check"] = _diagnostic(failed, "sigma check", lambda: _sigma_check(fits[best], search.tol), None)
    if choice.min_share is not None:
        fitting = [m for m in out["models"] if min(m["pi"]) >= choice.min_share]
        out["min_share"] = {"share": choice.min_share, "K": min(fitting, key=lambda m: m["bic"])["K"] if fitting else None}
    if choice.holdout:
        out["holdout"] = _diagnostic(failed, "holdout", lambda: {**_holdout(data, stats, Ks, search, z),
                                                                   "of": choice.holdout}, None)
    if choice.bootstrap:
        out["bootstrap"] = _diagnostic(failed, "bootstrap test",
                                       lambda: _bootstrap(stats, fits, choice.bootstrap, search, progress, data), None)
    out["verdict"] = _diagnostic(failed, "verdict", lambda: _verdict(out), None)
    table = None
    if pricing is not None:
        K = pricing.settings.K or best
        if K not in fits:
            raise InputError(f"prices for K = {K}: it is not among the K estimated (--K {' '.join(map(str, Ks))})")
        zones = read_zones(pricing.settings.zones, data.stores, pricing.settings.zone) if pricing.settings.zones else None
        found = _diagnostic(failed, "prices", lambda: price_policies(fits[K], data, _aligned(pricing.regular, data.stores),
                                                                     pricing.settings, zones), None)
        out["pricing"], table = found if found else (None, None)
    if failed:
        out["failed"] = failed
    out["notes"] = notes(out)
    for note in out["notes"]:
        _warn(note, UserWarning)
    out["store_segments"] = segments
    return Analysis(out, fits, data, table)


def _model_summary(fit, lags=None):
    """Everything results.json says of one Fit: the course's entry (em_sales._model_summary), then
    the analyst's: store-clustered standard errors, the residual autocorrelation within stores
    (from the panel's lags), AIC3, CAIC and SABIC, the smallest segment, the share of the
    likelihood gain from one segment to each store's own regression that the segments capture,
    segments that are not credible and, with covariates of membership, gamma and who is in each
    segment. A diagnostic that fails leaves its value empty and says so (failed), never the fit."""
    summary = _course_summary(fit)
    failed = summary.pop("failed", {})
    robust = _shown_errors(fit, _diagnostic(failed, "store-clustered standard errors", lambda: fit.se_robust, None))
    counts = np.bincount(fit.W.argmax(axis=1), minlength=fit.K)
    df = len(fit.W) - 1                          # t's degrees of freedom for the clustered intervals: stores - 1
    summary.update({
        "se_robust": {"kind": CLUSTERED, "df": df, "t_95": _t_quantile(0.975, df),
                      "theta": robust.theta.tolist(), "sigma": robust.sigma.tolist()},
        "autocorrelation": _diagnostic(failed, "residual autocorrelation", lambda: _autocorrelation(fit, lags), None),
        "aic3": fit.aic3, "caic": fit.caic, "sabic": fit.sabic,
        "smallest_segment": {"stores": int(counts.min()), "share": float(fit.pi.min())},
        "captured": _diagnostic(failed, "captured share", lambda: _captured(fit), None),
        "not_credible": {str(c + 1): why for c, why in
                         _diagnostic(failed, "not-credible check", lambda: _not_credible(fit), {}).items()},
        **_diagnostic(failed, "membership summary", lambda: _membership_summary(fit), {}),
        **_diagnostic(failed, "penalised fit", lambda: _penalised_summary(fit), {})})
    if failed:
        summary["failed"] = failed
    return summary


# ---------------------------------------------------------------------------------------------
# Every group of a long file (--by), in worker processes
# ---------------------------------------------------------------------------------------------

def _analyse_groups(source, Ks, model, search, choice, progress, name, pricing=None):
    """--by: one read (the engine, GROUP BY the column too), then each group analysed in its own
    process, the machine's cores across groups: an Analysis whose results are {"data", "by",
    "groups": {group: results}} (a group that cannot be fitted: {"data", "error"}), and whose
    prices are {group: each store's table}."""
    from em_sales_tools.engine import _engine_load
    by = source.by
    groups = _engine_load(source.path, source.named(), list(source.x), choice.folds(search.seed), by,
                          _reading(progress))
    regular = regular_weeks_by(source.path, source.x, pricing, source.named(), by) if pricing is not None else {}
    label = name or source.path
    jobs = {group: (data, Ks, model, search, choice, None, f"{label} [{by} = {group}]", None,
                    pricing and Inputs(pricing, regular.get(str(group))))
            for group, data in groups.items()}
    workers = min(len(jobs), os.cpu_count() or 1)
    if progress:
        progress(Progress("stage", what=f"fitting the {len(jobs)} groups of {by}"))
    if workers > 1:
        import multiprocessing                   # the path of --by only
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        with context.Pool(workers, initializer=_worker) as pool:     # leaving it early ends the workers
            done = dict(zip(jobs, pool.starmap(_group_results, jobs.values(), chunksize=1)))
            pool.close()
            pool.join()
    else:
        done = {group: _group_results(*job) for group, job in jobs.items()}
    for group, (each, _, caught) in done.items():
        for note in caught:
            _warn(f"{by} = {group}: {note}", UserWarning)
    return Analysis({"data": label, "by": by, "groups": {str(group): each for group, (each, _, _) in done.items()}}, {},
                    None, {str(group): table for group, (_, table, _) in done.items() if table is not None})


def _worker():
    """A worker process's signals: SIGTERM ends it quietly (the pool's own way to stop it), and
    Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _group_results(*job):
    """One group's results (in a worker process), its prices' table and its warnings' texts; a
    group that cannot be fitted (too few stores, a value refused) is said in its results, and
    the other groups go on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            try:
                found = _analyse_data(*job)
            except InputError as problem:
                return {"data": job[6], "error": str(problem)}, None, []
    return found.results, found.prices, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
