"""Covariates of membership from the analyst's side: new stores placed by their covariates (and a
few weeks of sales), who is in each segment (the segments' profiles, gamma and its test against
the model without covariates, for results.json), and the predictions file. The model itself, a
multinomial logit of membership on the stores' covariates, is em_sales's."""
import csv
import io
from typing import NamedTuple

import numpy as np

from em_sales import (LOG_2PI, MAX_ITER, TINY, TOL, InputError, SHARES, _array, _check_new_X, _finished, _log_joint,
                      _log_normalise, _m_step, _moments, _one_blas_thread, _penalty, _polish, _run_em, _wide_sums, _within)
from em_sales_tools.choice import LR_DECIMALS
from em_sales_tools.files import read_stores

COVARIATE_PENALTY = 1.0  # the ridge L (per sd) of the penalised fit offered where the ML one is separated: a
                         # N(0, 1) prior on each log-odds per sd (odds ratios per sd mostly within 1/7..7), and
                         # scikit-learn's default C = 1 / L for its multinomial logit


class Prediction(NamedTuple):
    """Fit.predict's answer: prior (M, K), posterior (M, K) or None, segment (M,) 1..K (the
    posterior's most likely, or the prior's without sales)."""
    prior: np.ndarray
    posterior: np.ndarray
    segment: np.ndarray


def predict(fit, covariates=None, y=None, X=None):
    """Segments of new stores: a Prediction of (M, K) arrays, prior (from covariates of
    membership: covariates (M, Q) in the units of the stores file, columns as
    model.covariates; without them pi for every store) and, given a few weeks of sales,
    posterior: y (T, M) log sales (NaN where missing) and X (T, P) or (T, M, P) with the columns
    of the X the fit was estimated from (with store effects two weeks or more a store). The prior
    from the covariates (standardised as in the fit), then Bayes' rule with each new store's
    likelihood in each segment from its own sums (_log_joint)."""
    stats, K = fit._stats, fit.K
    membership = stats.membership
    if membership.names:
        if covariates is None:
            raise InputError(f"this fit has covariates of membership: give covariates (M x {len(fit.model.covariates)}: "
                             f"{', '.join(fit.model.covariates)})")
        z = np.atleast_2d(_array(covariates, "covariates"))
        if z.shape[1] != len(fit.model.covariates) or not np.all(np.isfinite(z)):
            raise InputError(f"covariates must be M x {len(fit.model.covariates)} finite numbers "
                             f"({', '.join(fit.model.covariates)}); got shape {z.shape}")
        mean, sd = membership.scale
        new = membership._replace(Z=np.column_stack([np.ones(len(z)), (z - mean) / sd]))
        log_prior = new.log_prior(fit.gamma)                        # (K, M)
    elif covariates is not None:
        raise InputError("this fit has no covariates of membership: its prior is pi for every store")
    else:
        M = 1 if y is None else np.shape(y)[1] if np.ndim(y) == 2 else 1
        log_prior = np.log(np.maximum(np.repeat(fit.pi[:, None], M, axis=1), TINY))
    prior = np.exp(log_prior).T
    if y is None:
        return Prediction(prior, None, prior.argmax(axis=1) + 1)
    X = _check_new_X(_array(X, "X"), stats, "X", per_store=True)
    sums = _wide_sums(y, X)
    if len(sums.n) != len(prior):
        raise InputError(f"y has {len(sums.n)} stores (columns) but covariates {len(prior)} rows")
    if fit.model.store_effects:
        if (sums.n < 2).any():
            raise InputError("with store effects a new store needs two weeks of sales or more")
        m, offset, XtX, Xty, yty = _within(sums, stats.columns)
    else:
        m, offset, XtX, Xty, yty = sums.n, np.zeros(len(sums.n)), sums.XtX, sums.Xty, sums.yty
    const = offset - 0.5 * LOG_2PI * m
    new = stats._replace(n=sums.n, m=m, const=const, XtX=XtX, Xty=Xty, yty=yty, membership=SHARES,
                         moments=_moments(XtX, Xty, yty, m, const))
    log_joint = _log_joint(new, fit.theta, np.ones(K), fit.sigma) + log_prior
    posterior = _log_normalise(log_joint)[0].T
    return Prediction(prior, posterior, posterior.argmax(axis=1) + 1)


def _membership_summary(fit):
    """With covariates of membership, what results.json adds: gamma (K, 1 + Q: log-odds against
    the reference segment, the largest, whose row is 0; per sd of each covariate) and its standard errors, the covariates'
    names and standardisation, the likelihood-ratio test against the fit without them (no p-value
    where the fit is penalised: its log L is not a maximum), the segments they separate, each
    segment's profile (posterior-weighted covariate means), and the covariate penalty L (0: maximum
    likelihood; else also log L less the ridge, EM's objective)."""
    if fit.gamma is None:
        return {}
    stats, Q = fit._stats, len(fit.model.covariates)
    mean, sd = stats.membership.scale
    raw = stats.membership.covariates()
    lr = max(2 * (fit.loglik - fit.without_covariates.loglik), 0.0) if fit.without_covariates else None
    df = (fit.K - 1) * Q
    penalty = stats.membership.penalty
    return {"covariates": {"names": list(fit.model.covariates), "mean": mean.tolist(), "sd": sd.tolist()},
            "covariate_penalty": penalty, **({"penalised_loglik": fit.penalised_loglik} if penalty else {}),
            "reference_segment": stats.membership.reference(fit.gamma) + 1,
            "gamma": fit.gamma.tolist(), "se_gamma": fit.se.gamma.tolist(),
            "without_covariates": None if lr is None else
            {"loglik": fit.without_covariates.loglik, "lr": round(lr, LR_DECIMALS), "df": df,
             "p": None if penalty else _chi2_tail(lr, df)},
            "separated": {str(c + 1): names for c, names in fit.separated.items()},
            "profiles": ((fit.W.T @ raw) / np.maximum(fit.W.sum(axis=0), TINY)[:, None]).tolist()}


def _penalised(fit, penalty=COVARIATE_PENALTY, tol=TOL, max_iter=MAX_ITER):
    """The Fit of the same model with a ridge of L = penalty on gamma (Concomitant.ridge), from a Fit
    with covariates of membership: EM on the penalised objective from the M-step of the fit's
    posteriors, polished. Where the covariates separate a segment of the maximum-likelihood fit,
    this maximum is finite: what the report offers beside it."""
    L, stats = _penalty(penalty), fit._stats
    stats = stats._replace(model=stats.model._replace(covariate_penalty=L), membership=stats.membership._replace(penalty=L))
    with _one_blas_thread(len(stats.n)):
        run = _polish(stats, _run_em(stats, _m_step(stats, fit.W), tol, max_iter))
    return _finished(stats, run, "the penalised fit", fit.names, without_covariates=fit.without_covariates)


def _penalised_summary(fit):
    """Where the covariates separate a segment of a maximum-likelihood fit: {"penalised": the fit
    with a ridge of L = COVARIATE_PENALTY on gamma (_penalised), its L, log L, log L less
    the ridge, largest |gamma| against the reference segment (per sd) and whether every standard
    error of gamma is finite}; else {}."""
    if fit.gamma is None or not fit.separated:
        return {}
    penalised = _penalised(fit, COVARIATE_PENALTY)
    free = np.arange(fit.K) != fit._stats.membership.reference(penalised.gamma)
    return {"penalised": {"covariate_penalty": COVARIATE_PENALTY, "loglik": penalised.loglik,
                          "penalised_loglik": penalised.penalised_loglik,
                          "largest_gamma": float(np.abs(penalised.gamma).max()),
                          "se_finite": bool(np.isfinite(penalised.se.gamma[free]).all())}}


def _chi2_tail(x, df):
    """Pr[chi-square(df) > x] (scipy, imported here only), None without scipy or for df = 0."""
    try:
        from scipy.stats import chi2
    except ImportError:
        return None
    return float(chi2.sf(x, df)) if df > 0 else None


def _predictions_csv(fit, path):
    """--predict's file: each new store of a stores file, its most likely segment and its prior
    probability of each segment, from its covariates alone."""
    labels, z = read_stores(path, None, fit.model.covariates)
    prior = predict(fit, z).prior
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["store", "segment"] + [f"prior_{c + 1}" for c in range(fit.K)])
    for label, row in zip(labels, prior):
        writer.writerow([label, int(row.argmax()) + 1] + [f"{p:.6g}" for p in row])
    return out.getvalue()
