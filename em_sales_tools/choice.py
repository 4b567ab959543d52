"""How many segments, and what an answer rests on: the diagnostics beside the criteria (the share
of the likelihood gain from one segment to each store's own regression that the segments capture,
segments of a few stores that are not credible, the residual autocorrelation within stores), the
predictive log-likelihood of held-out weeks, a parametric bootstrap test of K against K + 1, the
verdict that weighs them, the sigma check of the course model, and which stores have their own
regression."""
import math
import warnings
from typing import NamedTuple

import numpy as np

from em_sales import (ABSORBED, COLLINEAR, CREDIBLE_STORES, MAX_ITER, STORES_NAMED, TINY, VARIANCE_FLOOR, InputError, Progress,
                      Sums, _check_K, _e_step, _moments, _own_fits, _polish, _pooled, _rss, _run_em, _search, _spread, _statistics)

AUTOCORRELATION = 0.1      # residual autocorrelation within stores above this, and store-clustered s.e. ...
ROBUST_RATIO = 1.2         # ... more than this x the model-based ones (median): the model-based are too small
HOLDOUT_FOLDS = 5          # --holdout: each store's weeks in this many folds: contiguous blocks of its weeks (autocorrelated
HOLDOUT_KINDS = ("blocks", "weeks")  # weeks predict their neighbours, which favours a large K), or single weeks at random
BOOTSTRAP_LEVEL = 0.05     # --bootstrap: K + 1 is preferred to K where the p-value is at most this
AR_BOOTSTRAP = 0.1         # ... its panels are drawn with each segment's AR(1) errors over the stores' own weeks where a
                           # segment's residual autocorrelation exceeds this, else with independent weeks from the sums (fast)
AR_LIMIT = 0.99            # ... (an estimated rho_c is held within +-this: a stationary process)
CREDIBLE_SPREAD = 5.0      # a segment of few stores with a coefficient more than this many robust sds from the stores' own: flagged
TINY_SPREAD = 1e-12        # ... (a robust sd below this counts as this: stores all alike)
MAD_SD = 1.4826            # a robust sd: this x the median absolute deviation (the sd of a normal)
LR_CRITICAL = 10.83        # chi-square(1) at 0.1%: the sigma check's test ...
SIGMA_MARGIN = 0.10        # ... and sigma-hat must be more than 10% away from the fixed sigma
NO_DEGREES = 1e-9          # a store's chi-square degrees of freedom where it has none (that draw is then 0)
LR_DECIMALS = 6            # a difference of log-likelihoods keeps their absolute noise (1e-9)
# The verdict (_verdict): one K where the evidence agrees on it, else none and why
VOTERS = ("BIC", "ICL", "holdout", "bootstrap", "min-share")   # each names a K: BIC and ICL always; the holdout
                           # (the best held-out score) and the bootstrap (the K it keeps) where run; --min-share
                           # (BIC's best K whose every segment holds that share) where given. AIC, AIC3 and SABIC
                           # are in the table but do not vote: their penalties are too light for mixtures, which
                           # they over-fit (they go on adding segments to describe a continuous spread); nor CAIC,
                           # BIC + k, which would count BIC's vote twice. A bootstrap whose panels cannot reject
                           # at BOOTSTRAP_LEVEL does not vote. Every voter must name the same K, and that K must
                           # have no not-credible and no unsupported segment and not be the largest K tried; but
                           # where the weeks are autocorrelated (rho above AUTOCORRELATION at BIC's K), the holdout
                           # and the bootstrap, which respect that, decide where they agree, BIC and ICL (whose n
                           # overstates the information then) named where they differ
HOLDOUT_TIE = 1.0          # the holdout names the smallest K whose held-out log-likelihood is within this of the best
                           # (a log-likelihood ratio below 1 is "not worth more than a bare mention": Kass & Raftery 1995)


def _autocorrelation(fit, lags):
    """The first-order autocorrelation of residuals within stores, over consecutive observed weeks,
    each store's residuals under each segment weighted by its posterior (centred on the store's
    mean with store effects), from the panel's Lags; None where its week order is not known (fits
    from arrays, tables of sums):
        rho = (sum_ic w_ic sum_pairs r_a r_b / sum_i pairs_i) / (sum_ic w_ic R_ic / sum_i m_i)."""
    found = _lag_products(fit, lags)
    if found is None:
        return None
    product, R = found
    return float((fit.W * product).sum() / lags.pairs.sum() / ((fit.W * R).sum() / fit._stats.m.sum()))


def _segment_autocorrelations(fit, lags):
    """Each segment's rho_c, as _autocorrelation with the stores weighted by their posteriors of c:
        rho_c = (sum_i w_ic sum_pairs r_a r_b / sum_i w_ic pairs_i) / (sum_i w_ic R_ic / sum_i w_ic m_i),
    (K,), 0 for a segment without pairs; None where the week order is not known."""
    found = _lag_products(fit, lags)
    if found is None:
        return None
    product, R = found
    W, m = fit.W, fit._stats.m
    pairs, variance = W.T @ lags.pairs, (W * R).sum(axis=0) / np.maximum(W.T @ m, TINY)
    rho = (W * product).sum(axis=0) / np.maximum(pairs, TINY) / np.maximum(variance, TINY)
    return np.where(pairs > 0, np.clip(rho, -AR_LIMIT, AR_LIMIT), 0.0)


def _lag_products(fit, lags):
    """(sum over store i's pairs of consecutive weeks of r_a r_b under each segment (N, K), R_ic (N, K)),
    r the residuals (centred on the store's mean with store effects); None without lags."""
    stats = fit._stats
    if lags is None or not lags.pairs.sum() > 0:
        return None
    keep, theta = list(stats.columns), fit.theta
    N, P = lags.xy.shape
    xx = lags.xx.reshape(N, P, P)[:, keep][:, :, keep]
    product = (lags.yy[:, None] - lags.xy[:, keep] @ theta.T - lags.yx[:, keep] @ theta.T
               + np.einsum("npq,kp,kq->nk", xx, theta, theta))                  # sum r_a r_b (N, K)
    if fit.model.store_effects:                  # residuals around the store's mean
        mean = (lags.sy[:, None] - lags.sx[:, keep] @ theta.T) / lags.n[:, None]
        product -= mean * ((lags.ya[:, None] - lags.xa[:, keep] @ theta.T) + (lags.yb[:, None] - lags.xb[:, keep] @ theta.T))
        product += lags.pairs[:, None] * mean ** 2
    return product, _rss(stats, theta).T


# ---------------------------------------------------------------------------------------------
# A sweep over K, results.json and the report
# ---------------------------------------------------------------------------------------------
def _holdout(data, stats, Ks, search, z=None):
    """The predictive log-likelihood of held-out weeks: each store's weeks drawn into
    HOLDOUT_FOLDS folds (load); for each fold, each K fitted on the other weeks (the same search),
    and the held-out weeks scored under it. With sums only: a store's held-out score is
    log sum_c pi_ic f_ic(all its weeks) - log sum_c pi_ic f_ic(its training weeks), at the
    training fit (with store effects, the ratio of within likelihoods is the predictive density
    with the store's level integrated out). A store with no training week in a fold (a store of
    one week, say) has nothing to be predicted from there: it sits that fold out, for every K
    and baseline alike (unscored). Beside it two baselines: one pooled regression (K = 1) and
    each store's own regression (its own coefficients and sigma from its training weeks; the
    pooled one where it has none). {"folds", "loglik": {K: ...}, "pooled", "own",
    "own_pooled_stores", "unscored"}, or {"folds", "skipped": why}."""
    model = stats.model
    Ks = sorted(set(Ks) | {1})
    scores, own, own_pooled, unscored = {K: 0.0 for K in Ks}, 0.0, 0, 0
    for fold in data.folds:
        train = Sums(*(a - b for a, b in zip(data.sums, fold)))
        keep = train.n > 0
        unscored += int((~keep & (fold.n > 0)).sum())
        train, fold, every = (Sums(*(a[keep] for a in sums)) for sums in (train, fold, data.sums))
        try:
            trained, scoring = (_statistics(sums, model, data.coefficients, None if z is None else z[keep])
                                for sums in (train, every))
            if max(Ks) > 1:
                _check_K(max(Ks), len(train.n))
        except InputError as problem:
            return {"folds": len(data.folds), "skipped": f"a fold's training weeks cannot be fitted ({problem})"}
        previous = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for K in Ks:
                fit = previous = _search(trained, K, search, previous=previous)
                scores[K] += _e_step(scoring, fit.theta, fit.membership, fit.sigma)[1] - fit.penalised_loglik
        score, pooled = _own_holdout(train, fold)
        own, own_pooled = own + score, max(own_pooled, pooled)
    return {"folds": len(data.folds), "loglik": {str(K): scores[K] for K in Ks}, "pooled": scores[1], "own": own,
            "own_pooled_stores": own_pooled, "unscored": unscored}


def _own_holdout(train, fold):
    """The held-out log-likelihood of each store's own regression on all of X's columns (its
    coefficients b_i and sigma_i^2 = R_i(b_i) / (n_i - P) from its training weeks, _own_fits); a
    store without an own regression (no more training weeks than columns, or a regressor constant
    within it) is predicted by the pooled regression. (score, stores predicted by the pooled one)."""
    N, P = train.Xty.shape
    own = _own_fits(train.XtX, train.Xty, train.yty, train.n)
    pooled = _pooled(train.XtX, train.Xty)
    b = np.where(own.usable[:, None], own.b, pooled)

    def rss(sums, b):
        return sums.yty - 2 * (b * sums.Xty).sum(axis=1) + np.einsum("np,npq,nq->n", b, sums.XtX.reshape(N, P, P), b)
    pooled_s2 = rss(train, np.broadcast_to(pooled, (N, P))).sum() / max(train.n.sum() - P, 1)
    s2 = np.where(own.usable, np.maximum(own.s2, TINY), pooled_s2)
    return float((-0.5 * fold.n * np.log(2 * math.pi * s2) - rss(fold, b) / (2 * s2)).sum()), int((~own.usable).sum())


def _bootstrap(stats, fits, B, search, progress=None, data=None):
    """A parametric bootstrap test of K against K + 1 for each pair of consecutive K fitted, in
    turn from the smallest (as mclust's mclustBootstrapLRT): B panels simulated from the K fit
    (_simulation), each fitted with K and K + 1 segments by the same search, and the p-value
    (1 + #{LR_b >= LR}) / (B + 1) of the observed likelihood ratio LR = 2 (loglik_{K+1} -
    loglik_K). It stops after the first K whose p-value is above BOOTSTRAP_LEVEL: that K is its
    choice (B = 19 is the least that can reject at 5%; 99 is usual). data: the Loaded panel, whose
    lags and rows let the simulation keep its weeks' autocorrelation. {"B", "tests": [{"K", "lr",
    "p", "weeks", "rho"}], "K"} (weeks: "AR(1)" or "independent", as simulated; rho: the K fit's
    segments' autocorrelations, None where unknown; no timing: results.json holds none)."""
    import numpy.random
    tests, chosen = [], None
    rng = numpy.random.default_rng(search.seed)
    for K in sorted(fits):
        if K + 1 not in fits:
            break
        observed = 2 * (fits[K + 1].loglik - fits[K].loglik)
        simulate, weeks, rho = _simulation(stats, fits[K], data)
        exceed = 0
        for b in range(B):
            simulated = simulate(rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = _search(simulated, K, search._replace(seed=b))
                large = _search(simulated, K + 1, search._replace(seed=b), previous=small)
            exceed += 2 * (large.loglik - small.loglik) >= observed
            if progress:
                progress(Progress("panels", K, b + 1, B, f"bootstrap K = {K} against {K + 1}"))
        tests.append({"K": K, "lr": round(observed, LR_DECIMALS), "p": (1 + exceed) / (B + 1),
                      "weeks": weeks,
                      "rho": None if rho is None else [round(float(r), 3) for r in rho]})
        if tests[-1]["p"] > BOOTSTRAP_LEVEL:
            chosen = K
            break
    return {"B": B, "tests": tests, "K": chosen}


def _simulation(stats, fit, data):
    """How the bootstrap draws panels from a fit: (a function of the random generator giving a
    panel's Stats, "independent" or "AR(1)", each segment's residual autocorrelation rho_c or None). Where every |rho_c| is
    at most AR_BOOTSTRAP, or the panel's rows are not kept (a file reduced by the engine, a table
    of sums), from the sums with independent weeks (_simulated: fast); else over the stores' own
    observed weeks with each segment's AR(1) errors (_ar_panel)."""
    lags, rows = (None, None) if data is None else (data.lags, data.rows)
    rho = _segment_autocorrelations(fit, lags)

    if rho is None or rows is None or not (np.abs(rho) > AR_BOOTSTRAP).any():
        return (lambda rng: _simulated(stats, fit, rng)), "independent", rho
    return _ar_panel(stats, fit, data, rho), "AR(1)", rho


def _ar_panel(stats, fit, data, rho):
    """A function drawing a panel's Stats from a fit over the stores' own observed weeks (data.rows):
    store i's segment c from its prior, and with its weeks t_1 < t_2 < ... (gaps as observed)
        y_it = x_it'theta_c + sigma_c e_it,  e_1 ~ N(0, 1),  e_k = a e_{k-1} + sqrt(1 - a^2) z_k,
        a = rho_c^(t_k - t_{k-1}), z_k ~ N(0, 1):
    stationary AR(1) errors of variance sigma_c^2 and correlation rho_c^d at d weeks apart (a store's
    level is 0: with store effects the within likelihood does not see it). The sums X'X, x, n are
    the panel's own; X'y, y'y and y's sum are summed from the drawn rows, and the Stats built as the
    fit's were (_statistics; its membership kept)."""
    rows, sums = data.rows, data.sums
    order = np.lexsort((rows.time, rows.store))
    store, X = rows.store[order], rows.X[order]
    weeks = _WeekOrder.of(store, rows.time[order])
    N, columns, plain = len(sums.n), list(stats.columns), stats.model._replace(covariates=())

    def ar1(rng):
        segment = (rng.random(N)[:, None] > np.cumsum(fit.prior, axis=1)).sum(axis=1).clip(0, fit.K - 1)[store]
        y = (X[:, columns] * fit.theta[segment]).sum(axis=1) + fit.sigma[segment] * weeks.ar1(rho[segment], rng)
        drawn = sums._replace(Xty=np.column_stack([np.bincount(store, X[:, j] * y, N) for j in range(X.shape[1])]),
                              yty=np.bincount(store, y * y, N), sy=np.bincount(store, y, N))
        return _statistics(drawn, plain)._replace(model=stats.model, membership=stats.membership)
    return ar1


class _WeekOrder(NamedTuple):
    """Rows sorted by store and week: each row's gap to its store's previous week (0 at its first),
    and for p = 1, 2, ... the rows that are their store's p-th week after the first (steps)."""
    gap: np.ndarray
    steps: list

    @classmethod
    def of(cls, store, time):
        R = len(store)
        first = np.ones(R, dtype=bool)
        first[1:] = store[1:] != store[:-1]
        start = np.flatnonzero(first)
        position = np.arange(R) - np.repeat(start, np.diff(np.append(start, R)))
        steps = [np.flatnonzero(position == p) for p in range(1, int(position.max()) + 1)] if R else []
        return cls(np.where(first, 0.0, np.diff(time, prepend=time[:1])), steps)

    def ar1(self, rho, rng):
        """Stationary AR(1) errors of variance 1 with each row's rho (R,), over the rows' weeks:
        e_1 ~ N(0, 1), e_k = a e_{k-1} + sqrt(1 - a^2) z_k with a = rho^(t_k - t_{k-1}), so that
        corr(e_j, e_k) = rho^|t_k - t_j|."""
        a = np.sign(rho) ** np.round(self.gap) * np.abs(rho) ** self.gap
        shock = np.sqrt(np.maximum(1 - a * a, 0.0))
        e = rng.standard_normal(len(a))
        for rows in self.steps:                  # every store's p-th week at once
            e[rows] = a[rows] * e[rows - 1] + shock[rows] * e[rows]
        return e


def _simulated(stats, fit, rng):
    """Stats of a panel drawn from a fit, made directly from the sums: store i's segment c from its
    prior, then with u ~ N(0, sigma_c^2 X_i'X_i) (X_i as in stats: within-centred with store
    effects, whose levels the within likelihood does not see)
        X_i'y_i = X_i'X_i theta_c + u,   y_i'y_i = theta_c'X_i'X_i theta_c + 2 theta_c'u + u'(X_i'X_i)^+ u
                  + sigma_c^2 chi^2(m_i - rank X_i),
    the sums of y_i = X_i theta_c + eps_i, eps_i ~ N(0, sigma_c^2 I)."""
    N, P = stats.Xty.shape
    segment = (rng.random(N)[:, None] > np.cumsum(fit.prior, axis=1)).sum(axis=1).clip(0, fit.K - 1)
    theta, sigma = fit.theta[segment], fit.sigma[segment]
    XtX = stats.XtX.reshape(N, P, P)
    values, vectors = np.linalg.eigh(XtX)
    values = np.where(values > COLLINEAR * values.max(axis=1, keepdims=True), values, 0.0)
    z = rng.standard_normal((N, P))
    u = np.einsum("npq,nq->np", vectors, np.sqrt(values) * z) * sigma[:, None]
    rank = (values > 0).sum(axis=1)
    chi2 = rng.chisquare(np.maximum(stats.m - rank, NO_DEGREES)) * (stats.m > rank)
    Xty = np.einsum("npq,nq->np", XtX, theta) + u
    yty = (np.einsum("np,npq,nq->n", theta, XtX, theta) + 2 * (theta * u).sum(axis=1)
           + sigma ** 2 * ((values > 0) * z * z).sum(axis=1) + sigma ** 2 * chi2)
    pooled_s2 = _pooled(stats.XtX, Xty, yty, stats.m)[1]
    return stats._replace(Xty=Xty, yty=yty, pooled_s2=pooled_s2,
                          moments=_moments(stats.XtX, Xty, yty, stats.m, stats.const))


def _sigma_check(fit, tol):
    """With sigma fixed: the common sigma estimated at the chosen K, by EM from the fixed-sigma
    fit (so the likelihood ratio is never negative, and no second search is needed), and a test
    of sigma = the fixed value. Rejects when LR > LR_CRITICAL and sigma-hat is more than
    SIGMA_MARGIN away from it: a difference that matters (standard errors scale with sigma),
    not merely one that a large panel can detect."""
    stats = fit._stats._replace(model=fit.model._replace(sigma="common"))
    start = fit.theta, fit.membership, np.full(fit.K, fit.sigma[0])
    common = _polish(stats, _run_em(stats, start, tol, MAX_ITER))
    fixed = float(fit.sigma[0])
    lr = max(2 * (common.loglik - fit.loglik), 0.0)
    estimate = float(common.sigma[0])
    return {"K": fit.K, "fixed": fixed, "estimate": estimate, "lr": round(lr, LR_DECIMALS),
            "rejects": bool(lr > LR_CRITICAL and abs(estimate / fixed - 1) > SIGMA_MARGIN)}


def _own_regression(stats, sums, stores, names):
    """How many stores have their own regression (_own_fits), for the diagnostics that set stores
    beside segments (not-credible, the holdout's own regression, the picture), and why
    the others are left out of them, by reason (a column that never changes within the store is
    named from the raw sums): {"stores", "left_out": {reason: {"count", "stores": the first}}}."""
    N = len(stats.n)
    own = _own_fits(stats.XtX, stats.Xty, stats.yty, stats.m)
    P = sums.Xty.shape[1]
    square = np.diagonal(sums.XtX.reshape(N, P, P), axis1=1, axis2=2) / sums.n[:, None]
    spread = square - (sums.sx / sums.n[:, None]) ** 2
    constant = (spread <= ABSORBED * square) & (_spread(sums)[None, :])           # varies overall, not here
    why = {}
    for i in np.flatnonzero(~own.usable):
        reason = ("with no more weeks than coefficients" if own.short[i] else
                  f"in which {names[int(np.argmax(constant[i]))]} never changes" if constant[i].any() else
                  "whose regressors are collinear")
        why.setdefault(reason, []).append(stores[i])
    return {"stores": int(own.usable.sum()),
            "left_out": {reason: {"count": len(labels), "stores": labels[:STORES_NAMED]} for reason, labels in why.items()}}


def _captured(fit):
    """The share of the log-likelihood gain from one segment to each store's own regression that
    the K segments achieve,
        captured = (log L_K - log L_1) / (log L_own - log L_1)      (_bounds),
    None where the stores' own regressions gain nothing on one segment. Every model of K segments
    under the same sigma and store effects lies between the two, so with exact maxima it is in
    [0, 1] (rounding is clipped) and a model that nests another never captures less."""
    one, own = _bounds(fit._stats)
    if not own - one > 10.0 ** -LR_DECIMALS:
        return None
    return float(min(max((fit.loglik - one) / (own - one), 0.0), 1.0))


def _bounds(stats):
    """The log-likelihoods of one segment, log L_1 (pooled least squares), and of the saturated
    model, log L_own (each store its own segment: its own coefficients b_i by least squares from
    its sums, the minimum-norm ones where its weeks do not identify them all, _own_fits), under
    the model's sigma and store effects:
        log L = sum_i const_i - (m_i / 2) log sigma_i^2 - R_i / (2 sigma_i^2),
    R_i store i's residual sum of squares (at the pooled theta; at b_i, R_i = y_i'y_i - b_i'X_i'y_i)
    and sigma^2 as the M-step sets it for those segments (the fixed one; sum R / sum m for one
    estimated; R_i / m_i for each store's own), at least VARIANCE_FLOOR x the pooled residual
    variance. A store's term under any K segments is at most its own regression's (a store with
    no more weeks than coefficients is fitted exactly, at the floor of sigma). (log L_1, log L_own)."""
    theta = _pooled(stats.XtX, stats.Xty)
    own = _own_fits(stats.XtX, stats.Xty, stats.yty, stats.m).b
    every = np.ones(len(stats.m), dtype=bool)

    def loglik(rss, variance):
        s2 = np.maximum(variance, VARIANCE_FLOOR * stats.pooled_s2)
        return float((stats.const - 0.5 * stats.m * np.log(s2) - rss / (2 * s2)).sum())
    pooled = np.maximum(_rss(stats, theta[None])[0], 0.0)
    alone = np.maximum(stats.yty - (own * stats.Xty).sum(axis=1), 0.0)
    variance = stats.model.mode.variance
    return (loglik(pooled, variance(stats, pooled.sum(keepdims=True), stats.m.sum(keepdims=True), every[:1])),
            loglik(alone, variance(stats, alone, stats.m, every)))


def _not_credible(fit):
    """{segment: why} for a segment of fewer than CREDIBLE_STORES stores whose coefficient lies
    more than CREDIBLE_SPREAD robust sds (MAD_SD x the median absolute deviation) from the median
    of the stores' own (those with an own regression, _own_fits)."""
    stats = fit._stats
    own = _own_fits(stats.XtX, stats.Xty, stats.yty, stats.m)
    if own.usable.sum() < 3:
        return {}
    b = own.b[own.usable]
    median = _median(b)
    spread = MAD_SD * _median(np.abs(b - median))
    found = {}
    for c in np.flatnonzero(fit.W.sum(axis=0) < CREDIBLE_STORES):
        far = np.abs(fit.theta[c] - median) > CREDIBLE_SPREAD * np.maximum(spread, TINY_SPREAD)
        if far.any():
            j = int(np.argmax(np.abs(fit.theta[c] - median) / np.maximum(spread, TINY_SPREAD)))
            found[c] = (f"({fit.W[:, c].sum():.1f} stores) is not credible: its {fit.names[j]} coefficient "
                        f"{fit.theta[c, j]:.3g} lies far outside the stores' own estimates (median {median[j]:.3g}, "
                        f"robust sd {spread[j]:.3g}); it describes those stores, not a segment")
    return found


def _verdict(results):
    """The K the evidence supports, from results.json's dictionary (its models, holdout, bootstrap
    and min_share): each of VOTERS that was run names a K (the bootstrap none where it rejects
    every K it tested; --min-share none where no K qualifies). The verdict is the K they all name,
    unless one of its segments is not credible or unsupported, or it is the largest K tried (a
    wider --K may go further); else none, with what separates the candidates and the option not
    yet used. agreeing: the voters that name the verdict's K or, where there is none, the K most
    of them name (BIC's where tied); disagreeing: the others, {name: K}. A verdict of the criteria
    alone says so.
    {"K": int or None, "reasons": [...], "agreeing": [...], "disagreeing": {...}}."""
    models = {m["K"]: m for m in results["models"]}
    if len(models) < 2:
        return {"K": None, "reasons": [f"one K fitted (K = {next(iter(models))}): the evidence compares K; give "
                                       "several (--K 1 2 3 4)"], "agreeing": [], "disagreeing": {}}
    holdout, boot, share = results.get("holdout"), results.get("bootstrap"), results.get("min_share")
    words = {"BIC": "BIC", "ICL": "ICL", "holdout": "the holdout", "bootstrap": "the bootstrap",
             "min-share": f"--min-share {share['share']:g}" if share else ""}
    advice = {"holdout": "--holdout would score each K on weeks it has not seen",
              "min-share": "--min-share S would keep only a K whose every segment holds a share S of the stores",
              "bootstrap": "--bootstrap 99 would test each K against K + 1"}
    picks, asides = {"BIC": min(models.values(), key=lambda m: m["bic"])["K"],
                     "ICL": min(models.values(), key=lambda m: m["icl"])["K"]}, []
    if holdout and "loglik" in holdout:
        best = max(holdout["loglik"].values())
        picks["holdout"] = min(int(K) for K, score in holdout["loglik"].items() if score >= best - HOLDOUT_TIE)
    elif holdout:
        asides.append("the holdout was skipped")
    if boot and boot["tests"] and 1 / (boot["B"] + 1) > BOOTSTRAP_LEVEL:
        asides.append(f"the bootstrap's {boot['B']} panels cannot reject at {BOOTSTRAP_LEVEL:g}: it does not vote")
    elif boot and boot["tests"]:
        picks["bootstrap"] = boot["K"]
    if share:
        picks["min-share"] = share["K"]
    named = [K for K in picks.values() if K is not None]
    chosen = max(set(named), key=lambda K: (named.count(K), K == picks["BIC"]))
    rho = models[picks["BIC"]].get("autocorrelation")
    dependent = (rho is not None and rho > AUTOCORRELATION and picks.get("holdout") is not None
                 and picks.get("holdout") == picks.get("bootstrap") and holdout.get("of", "blocks") == "blocks"
                 and all(test.get("weeks") == "AR(1)" for test in boot["tests"]))
    if dependent:
        chosen = picks["holdout"]
    agreeing = [name for name in VOTERS if name in picks and picks[name] == chosen]
    disagreeing = {name: picks[name] for name in VOTERS if name in picks and picks[name] != chosen}
    vetoes = _vetoes(models, chosen)
    if dependent and not vetoes and set(disagreeing) <= {"BIC", "ICL"}:
        model = models[chosen]
        reasons = [f"{_listed([words[name] for name in agreeing])} agree; the holdout's blocks of weeks and the "
                   f"bootstrap's AR(1) panels respect the weeks' autocorrelation (rho = {rho:.2f})",
                   f"the bootstrap keeps {chosen} (p = {boot['tests'][-1]['p']:.2f})"]
        if disagreeing:
            one = len(disagreeing) == 1
            reasons.append(f"{_listed([words[name] for name in disagreeing])} {'picks' if one else 'pick'} "
                           f"{_listed([str(K) for K in dict.fromkeys(disagreeing.values())])}: autocorrelated weeks "
                           f"carry less information than their number, so {'its penalty is' if one else 'their penalties are'} "
                           "too light")
        reasons.append(f"every segment holds at least {100 * model['smallest_segment']['share']:.0f}% of the stores "
                       f"({model['smallest_segment']['stores']} in the smallest)")
        return {"K": chosen, "reasons": reasons + asides, "agreeing": agreeing, "disagreeing": disagreeing}
    if not disagreeing and not vetoes:
        model = models[chosen]
        reasons = [_listed([words[name] for name in agreeing if name != "bootstrap"]) + " agree"]
        if "bootstrap" in agreeing:
            reasons.append(f"the bootstrap keeps {chosen} (p = {boot['tests'][-1]['p']:.2f})")
        reasons.append(f"every segment holds at least {100 * model['smallest_segment']['share']:.0f}% of the stores "
                       f"({model['smallest_segment']['stores']} in the smallest)")
        if not {"holdout", "bootstrap"} & set(agreeing):
            reasons.append("the criteria alone" + ("" if holdout else ": " + advice["holdout"]))
        return {"K": chosen, "reasons": reasons + asides, "agreeing": agreeing, "disagreeing": {}}
    others = {}
    for name, K in disagreeing.items():
        others.setdefault(K, []).append(words[name])
    reasons = [", ".join(_picks(names, K) for K, names in [(chosen, [words[name] for name in agreeing])]
                         + list(others.items()))]
    if "bootstrap" in disagreeing and picks["bootstrap"] is None:
        last = boot["tests"][-1]
        reasons.append(f"the bootstrap rejects every K it tested, the last K = {last['K']} against {last['K'] + 1} "
                       f"(p = {last['p']:.2f})")
    if "min-share" in disagreeing and share["K"] is None:
        reasons.append(f"no K tried has every segment holding {100 * share['share']:.0f}% of the stores")
    reasons += [said for said in (_between(models, holdout, *sorted((chosen, K))) for K in sorted(K for K in others
                                                                                      if K is not None)) if said]
    reasons += vetoes + asides
    unused = [advice[name] for name, used in (("holdout", holdout), ("min-share", share), ("bootstrap", boot)) if not used]
    return {"K": None, "reasons": reasons + unused[:1], "agreeing": agreeing, "disagreeing": disagreeing}


def _vetoes(models, K):
    """Why K cannot be the verdict though the evidence names it: a segment not credible or not
    supported, or K the largest tried."""
    model = models.get(K)
    if model is None:
        return [f"K = {K} was not fitted (--K {' '.join(map(str, sorted(set(models) | {K})))})"]
    found = [f"K = {K}'s segment {c} is not credible" for c in model.get("not_credible", {})]
    if model.get("unsupported"):
        found.append(f"the data support at most {model['supported_K']} of K = {K}'s segments")
    if K == max(models):
        found.append(f"K = {K} is the largest K tried: a wider --K may go further")
    return found


def _between(models, holdout, low, high):
    """What separates two candidates: how the larger K's segments share the stores (each's most
    likely stores), and which of the two BIC, ICL (with the larger K's entropy, where they part)
    and the held-out weeks favour, by how much (None where neither was fitted nor held out)."""
    parts = []
    if low in models and high in models:
        small, large = models[low], models[high]
        parts.append(f"its segments hold {_listed([str(n) for n in sorted(large['stores_in_segment'])])} stores")
        favours = {name: (low if large[key] > small[key] else high, abs(large[key] - small[key]))
                   for name, key in (("BIC", "bic"), ("ICL", "icl"))}
        parts += [f"{name} favours {K} by {gap:.2f}" for name, (K, gap) in favours.items()]
        if favours["BIC"][0] != favours["ICL"][0]:
            parts[-1] += f" (entropy {large['entropy']:.3f}: ICL charges uncertain memberships)"
    scores = (holdout or {}).get("loglik", {})
    if str(low) in scores and str(high) in scores:
        gap = scores[str(high)] - scores[str(low)]
        parts.append(f"the held-out weeks favour {high if gap > 0 else low} by {abs(gap):.2f}")
    return f"K = {high} against {low}: " + ", ".join(parts) if parts else None


def _picks(names, K):
    """"BIC and ICL pick 3", "the bootstrap keeps none"."""
    verb = "keeps" if names == ["the bootstrap"] else "picks" if len(names) == 1 else "pick"
    return f"{_listed(names)} {verb} {'none' if K is None else K}"


def _listed(names):
    """a, b and c."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _t_quantile(p, df):
    """The p-quantile of Student's t with df >= 1 degrees of freedom, by Hill's algorithm (Comm. ACM
    13, 1970, algorithm 396): exact for df = 1 and 2, else an expansion about the normal quantile
    (statistics.NormalDist) in the centre and one in the tail; relative error below 1e-5 for every
    df, below 1e-8 from df = 20 (to critical values of store-clustered intervals, t with N - 1 df)."""
    if p == 0.5:
        return 0.0
    P, n = 2 * min(p, 1 - p), float(df)                    # P: the two-tailed probability
    if n == 1:
        q = 1 / math.tan(P * math.pi / 2)
    elif n == 2:
        q = math.sqrt(2 / (P * (2 - P)) - 2)
    else:
        a = 1 / (n - 0.5)
        b = 48 / (a * a)
        c = ((20700 * a / b - 98) * a - 16) * a + 96.36
        d = ((94.5 / (b + c) - 3) / b + 1) * math.sqrt(a * math.pi / 2) * n
        y = (d * P) ** (2 / n)
        if y > 0.05 + a:                                     # the centre: about the normal quantile
            from statistics import NormalDist
            x = NormalDist().inv_cdf(P / 2)
            y = x * x
            if n < 5:
                c += 0.3 * (n - 4.5) * (x + 0.6)
            c = (((0.05 * d * x - 5) * x - 7) * x - 2) * x + b + c
            y = math.expm1(a * ((((((0.4 * y + 6.3) * y + 36) * y + 94.5) / c - y - 3) / b + 1) * x) ** 2)
        else:                                                # the far tail
            y = ((1 / (((n + 6) / (n * y) - 0.089 * d - 0.822) * (n + 2) * 3) + 0.5 / (n + 4)) * y - 1) \
                * (n + 1) / (n + 2) + 1 / y
        q = math.sqrt(n * y)
    return q if p > 0.5 else -q


def _median(values):
    """The median of each column of values (N, ...) without NaN, as np.median gives it (which
    imports numpy.ma: a fifth of a course run's imports)."""
    ordered = np.sort(values, axis=0)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
