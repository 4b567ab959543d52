"""How many segments, and what an answer rests on: the diagnostics beside the criteria (the share
of the stores' spread the segments capture, segments of a few stores that are not credible, the
residual autocorrelation within stores), the predictive log-likelihood of held-out weeks, a
parametric bootstrap test of K against K + 1, the sigma check of the course model, and which
stores have their own regression."""
import math
import warnings

import numpy as np

from em_sales import (ABSORBED, COLLINEAR, CREDIBLE_STORES, MAX_ITER, STORES_NAMED, TINY, InputError, Progress, Sums, _check_K,
                      _e_step, _own_fits, _polish, _pooled, _rss, _run_em, _search, _spread, _statistics)

AUTOCORRELATION = 0.1      # residual autocorrelation within stores above this, and store-clustered s.e. ...
ROBUST_RATIO = 1.2         # ... more than this x the model-based ones (median): the model-based are too small
HOLDOUT_FOLDS = 5          # --holdout: each store's weeks in this many folds: contiguous blocks of its weeks (autocorrelated
HOLDOUT_KINDS = ("blocks", "weeks")  # weeks predict their neighbours, which favours a large K), or single weeks at random
BOOTSTRAP_LEVEL = 0.05     # --bootstrap: K + 1 is preferred to K where the p-value is at most this
CREDIBLE_SPREAD = 5.0      # a segment of few stores with a coefficient more than this many robust sds from the stores' own: flagged
TINY_SPREAD = 1e-12        # ... (a robust sd below this counts as this: stores all alike)
MAD_SD = 1.4826            # a robust sd: this x the median absolute deviation (the sd of a normal)
LR_CRITICAL = 10.83        # chi-square(1) at 0.1%: the sigma check's test ...
SIGMA_MARGIN = 0.10        # ... and sigma-hat must be more than 10% away from the fixed sigma
NO_DEGREES = 1e-9          # a store's chi-square degrees of freedom where it has none (that draw is then 0)
LR_DECIMALS = 6            # a difference of log-likelihoods keeps their absolute noise (1e-9)


def _autocorrelation(fit, lags):
    """The first-order autocorrelation of residuals within stores, over consecutive observed weeks,
    each store's residuals under each segment weighted by its posterior (centred on the store's
    mean with store effects), from the panel's Lags; None where its week order is not known (fits
    from arrays, tables of sums):
        rho = (sum_ic w_ic sum_pairs r_a r_b / sum_i pairs_i) / (sum_ic w_ic R_ic / sum_i m_i)."""
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
    variance = (fit.W * _rss(stats, theta).T).sum() / stats.m.sum()
    return float((fit.W * product).sum() / lags.pairs.sum() / variance)


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


def _bootstrap(stats, fits, B, search, progress=None):
    """A parametric bootstrap test of K against K + 1 for each pair of consecutive K fitted, in
    turn from the smallest (as mclust's mclustBootstrapLRT): B panels simulated from the K fit
    (_simulated), each fitted with K and K + 1 segments by the same search, and the p-value
    (1 + #{LR_b >= LR}) / (B + 1) of the observed likelihood ratio LR = 2 (loglik_{K+1} -
    loglik_K). It stops after the first K whose p-value is above BOOTSTRAP_LEVEL: that K is its
    choice (B = 19 is the least that can reject at 5%; 99 is usual). {"B", "tests": [{"K", "lr", "p"}], "K"} (no
    timing: results.json holds none)."""
    import numpy.random
    tests, chosen = [], None
    rng = numpy.random.default_rng(search.seed)
    for K in sorted(fits):
        if K + 1 not in fits:
            break
        observed = 2 * (fits[K + 1].loglik - fits[K].loglik)
        exceed = 0
        for b in range(B):
            simulated = _simulated(stats, fits[K], rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                small = _search(simulated, K, search._replace(seed=b))
                large = _search(simulated, K + 1, search._replace(seed=b), previous=small)
            exceed += 2 * (large.loglik - small.loglik) >= observed
            if progress:
                progress(Progress("panels", K, b + 1, B, f"bootstrap K = {K} against {K + 1}"))
        tests.append({"K": K, "lr": round(observed, LR_DECIMALS), "p": (1 + exceed) / (B + 1)})
        if tests[-1]["p"] > BOOTSTRAP_LEVEL:
            chosen = K
            break
    return {"B": B, "tests": tests, "K": chosen}


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
                          moments=np.column_stack([stats.XtX, Xty, yty]))


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
    beside segments (captured, not-credible, the holdout's own regression, the picture), and why
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
    """The share of the spread of the stores' own price coefficients (their own least squares,
    weighted by precision 1 / var(b_i)) that the segments' explain: a weighted R^2 of b_i on
    sum_c w_ic beta_c, over the stores with an own regression (_own_fits). None where fewer than
    3 stores have one."""
    stats = fit._stats
    own = _own_fits(stats.XtX, stats.Xty, stats.yty, stats.m)
    keep = own.usable & (np.nan_to_num(own.var[:, stats.price]) > 0)
    if keep.sum() < 3:
        return None
    weight = 1 / own.var[keep, stats.price]
    b, segment = own.b[keep, stats.price], (fit.W @ fit.theta[:, stats.price])[keep]
    centre = np.average(b, weights=weight)
    total = (weight * (b - centre) ** 2).sum()
    return float(max(0.0, 1 - (weight * (b - segment) ** 2).sum() / total)) if total > 0 else None


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


def _median(values):
    """The median of each column of values (N, ...) without NaN, as np.median gives it (which
    imports numpy.ma: a fifth of a course run's imports)."""
    ordered = np.sort(values, axis=0)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
