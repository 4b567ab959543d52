"""em_sales: segments of stores from weekly sales, by maximum likelihood with the EM algorithm.

The course's model, for store i = 1..N and week t = 1..T:

    log S_it = alpha_c + beta_c log p_t + eps_it,   eps_it ~ N(0, 1),   Pr[C_i = c] = pi_c,

store i in an unobserved segment c for all its weeks. The assignment's five functions, in its
call forms (y is T x N log sales, NaN where a store has no sale that week; X is T x P, here
[1, log p]):

    LogL(theta, pi, y, X) -> float              the observed-data log-likelihood
    EStep(theta, pi, y, X) -> W (N, K)          W[i, c] = Pr[C_i = c | y_i, theta, pi]
    MStep(y, X, W) -> (theta, pi)               the maximiser of the expected complete log-likelihood
    EM(K, y, X, tol, max_iter, seed) -> (theta, pi, loglik)      one run from a random start
    Estimate(K, y, X, n_init, seed) -> (theta, pi, loglik)       the best of n_init runs, searched

theta is K x P (row c: segment c; a flat (alpha_1, beta_1, alpha_2, ...) is accepted too). EM and
Estimate return a Fit, which unpacks as (theta, pi, loglik) and carries sigma, the posteriors W,
AIC, BIC, standard errors and a summary(). The generalisations for real panels are options of
the model, keyword arguments of every function: sigma (a number: fixed at it, the default 1;
"common": one estimated for all segments; "segment": one per segment), store_effects (each store
its own intercept, by the within-store likelihood), and X of T x N x P (each store its own prices
and regressors). Everything runs on per-store sufficient statistics (n_i, X_i'X_i, X_i'y_i,
y_i'y_i); README.md and docs/derivations.md derive every formula.

Run as a program, `python em_sales.py data.csv` estimates K = 2, 3, 4, prints a report and writes
results.json (python em_sales.py --help). This file is the estimator and stands alone on numpy:
copied into an empty folder it reads the course's wide file and writes the assignment's
results.json. The analyst's package em_sales_tools (long and Parquet files, covariates from a
stores file, how many segments, prices, Spark, the picture) sits beside it and imports it; where
it is importable, main() hands the command line to it (README, "A map of the code").
"""
import argparse
import contextlib
import csv
import io
import json
import math
import os
import random
import re
import signal
import sys
import warnings
from typing import NamedTuple

import numpy as np

__version__ = "1.1.0"
__all__ = ["LogL", "EStep", "MStep", "EM", "Estimate", "StandardErrors", "Fit", "Params", "Model", "Search", "Progress",
           "read_panel", "panel_arrays", "sweep", "results", "report", "results_json", "segments_csv", "overfitted",
           "main", "Sums", "InputError", "ConvergenceWarning", "__version__"]


# ---------------------------------------------------------------------------------------------
# The rules, each in one place
# ---------------------------------------------------------------------------------------------
LOG_2PI = math.log(2.0 * math.pi)
# Convergence of one EM run
TOL = 1e-8               # default tolerance: log-likelihood gain, posterior change, Newton decrement
MIN_TOL = 1e-12          # a smaller tol is below what a log-likelihood's rounding lets us measure
MAX_ITER = 10_000        # default iterations of one run
ROUNDING = 1e-13         # relative rounding error of a log-likelihood: changes below it are noise
NEWTON_GAIN = 1.0        # Newton steps are tried once an iteration gains less than this
NEWTON_HALVINGS = 6      # a Newton step is halved at most this often before it is given up
SQUAREM_BACKOFFS = 3     # SQUAREM's extrapolation is shortened at most this often, ...
SQUAREM_REACH = 1.01     # ... while its step length |alpha| reaches beyond this (1: the two plain steps)
FLAT = 1e-8              # a curvature below FLAT x the largest is flat: a ridge, not a maximum
POLISH_STEPS = 2         # Newton steps after convergence, to the maximum's last digits
SAME_LOGLIK = 1e-9       # two points are one maximum if their log-likelihoods agree to this
SAME_POSTERIOR = 1e-6    # ... and every posterior probability to this (in some order of segments)
# The model's numbers
VARIANCE_FLOOR = 1e-10   # an estimated sigma^2 is at least this x the pooled residual variance
VALUE_LIMIT = 1e100      # |value| above this in y, X, theta or sigma: squares would overflow
SIGMA_RANGE = (1e-100, 1e100)   # a fixed sigma outside this range cannot be computed with
LOG_SALES_LIMIT = 100.0  # |log S| above this is no log of a real quantity
SPREAD_FLOOR = 1e-5      # a regressor whose sd is below this x max(1, |mean|) is a constant
COLLINEAR = 1e-12        # smallest eigenvalue of X'X in correlation form: below it, collinear
ABSORBED = 1e-12         # a column's within-store sum of squares below this x its raw one: constant there
EXACT_FIT = 1e-12        # pooled residual variance below this x mean y^2: fitted exactly (to rounding)
# The search (Estimate): starts, then split-and-merge moves ranked in a tournament
N_INIT = 10              # default starts (k-means++ on the stores' own coefficients)
KMEANS_STEPS = 10        # Lloyd's steps of the covariates' k-means starts
LABEL_SPREAD = 2.0       # sd of the random log-odds (per sd of a covariate) that draw the covariates' label starts ...
LABEL_SHRINK = 0.1       # ... whose posteriors are the labels shrunk this far towards 1/K
MAX_STARTS = 10_000      # n_init above this is refused: 10 to 100 starts are plenty
WARM_UP = 30             # plain EM iterations for all starts together, as one batch ...
WARM_UP_LARGE = 10       # ... or this many when starts x K x stores exceed BATCH_LARGE
BATCH_LARGE = 1_000_000
BATCH_CELLS = 2_000_000  # a batch's (starts, K, N) arrays are cut into chunks of about this size
NEAR_TIE = 2.0           # a second maximum this close to the best gets moves of its own
MOVE_ROUNDS = 5          # with covariates of membership: rounds of moves from the maxima within NEAR_TIE at most
TOURNAMENT = ((3, 2, 4), (8, 1, 2))  # stages: (SQUAREM steps for all starts at once, best kept
                                     # of each kind, best kept overall); the last stage's run to the end
COVARIATE_TOURNAMENT = ((5, 2, 4), (8, 1, 2))  # with covariates of membership, whose moves show later where they lead
GROW_STAGES = ((3, 0, 3),)  # growing a fit by one segment: 3 steps, the 3 best run to the end
COPY_TOLERANCE = 1e-3    # starts whose segments agree to this (relative) are copies: one place
TAIL_SHARE = 0.1         # a tail move carves this share of a segment's weight ...
TAIL_DISTANCE = 2.0      # ... this many standard deviations out along its main axis
NOISE_FACTORS = (0.5, 1.5)   # a noise move splits a segment into these multiples of its sigma
OUTLIERS = 2             # stores per criterion where a move opens a new segment ...
OUTLIERS_GROW = 4        # ... and where growing a fit opens one
STORE_MOVES = 8          # the most ambiguous stores, each moved to its second segment
MISFIT_POOL = 20         # stores scored by greedy EM's criterion for a quiet new segment
MISFIT_ITERATIONS = 10   # EM iterations on the new segment's weight in that criterion
BLAS_THREADS_FROM = 20_000  # fits of fewer stores hold numpy's BLAS to one thread (threadpoolctl)
TINY = 1e-300            # a floor for divisors and logs of what may be 0 (near the smallest normal float)
EMPTY_SHARE = 1e-12      # a segment with a smaller pi is empty: no Newton step and no standard error there
PROBABILITY_SUM = 1e-6   # probabilities a caller gives (pi, a row of W) must sum to 1 within this
CLUSTERED = "CR3"        # what se_robust reports: the store-clustered jackknife (_covariance), t on N - 1 df
EXP_CAP = 700.0          # exp() arguments are capped here (exp(709) overflows)
GAMMA_LIMIT = 10.0       # |gamma| (membership log-odds against the largest segment, per sd of a covariate)
                         # beyond this: the covariates separate the segment (no finite maximum; odds 22,000:1)
GAMMA_STEPS = 100        # Newton iterations of the membership M-step (a weighted multinomial logit) at most
SEPARATED_STEPS = 200    # a run whose covariates separate a segment stops as plain EM does after this many iterations
# What the report says
UNSUPPORTED_WEIGHT = 0.5   # a segment with less posterior weight than half a store holds almost none ...
EMPTY_WEIGHT = 0.005       # ... and with less than this, none (an empty segment: a flat ridge)
EQUAL_SEGMENTS = 1e-3      # segments whose theta and sigma agree to this (relative) are one
CREDIBLE_STORES = 2.5      # a segment holding less stores' weight than this (or most likely for 1 or 2): a few stores
BIC_STRENGTH = ((10, "very strong"), (6, "strong"), (2, "positive"), (0, "weak"))  # Kass-Raftery
JSON_DIGITS = 8            # significant digits in results.json: rounding noise (up to 2e-11, relative, between
                           # machines and BLAS kernels) is left out ...
JSON_DIGITS_LOGLIK = 10    # ... and for log-likelihoods and criteria, whose noise is 1e-14 relative
# Reading files
MISSING = ("", "NA", "NaN", "nan")            # cells that mean "no observation this week"
MAX_BYTES = 2 ** 31      # 2 GiB: a larger (or endless) file is refused by the exact reader, not read into memory
SNIFF_BYTES = 1 << 20    # a file's first MB: a binary file shows itself there (a NUL byte) before the rest is read
CELL_SHOWN = 40          # a cell in a message is cut to this many characters
STORES_NAMED = 5         # a note names at most this many stores
PRICE_NAMES = r"prices?(usd|eur|gbp|chf|jpy|cad|aud|sek|nok|dkk|inr|cny)?"   # a wide file's price column, by
                         # its letters (Price, PriceUSD); also a name with the word price (unit_price, Price ($))
INDEX_NAMES = ("week", "weeks", "wk", "date", "day", "time", "period", "t", "index", "row",
               "unnamed: 0", "month", "year")          # a first column so named is no price
STORE_NAMES = ("store", "stores", "store_id", "storeid", "store id", "store_nbr", "store_no", "shop",
               "shop_id", "outlet", "outlet_id", "retailer", "retailer_id", "id", "branch", "location",
               "customer", "account", "site")          # ... and one so named is a long file's
TOOLS_OPTIONS = ("--x", "--store", "--week", "--sales", "--price", "--stores", "--covariates", "--predict", "--by",
                 "--sums", "--holdout", "--holdout-folds", "--bootstrap", "--min-share", "--plot", "--engine",
                 "--master", "--cost", "--margin", "--zones", "--zone", "--max-change", "--hold-average-price",
                 "--draws", "--prices", "--covariate-penalty")     # the analyst's package serves these


class InputError(ValueError):
    """What the caller gave cannot be used: a file (the message names it, the line and the column),
    an argument (named), or a panel the model cannot be estimated from (said why). A ValueError,
    so that callers who catch that catch it; the command line tells it from a failure of the
    program (any other exception) by this type."""


class ConvergenceWarning(UserWarning):
    """EM stopped at max_iter before its stopping rule was met."""


def _warn(message, category=UserWarning):
    """warnings.warn pointing at the first caller outside em_sales and em_sales_tools (the user's line)."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("em_sales", "em_sales_tools"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


# ---------------------------------------------------------------------------------------------
# The model and its results, as data
# ---------------------------------------------------------------------------------------------

class Model(NamedTuple):
    """What is estimated. sigma: a key of SIGMA; fixed: sigma's value where it is fixed;
    store_effects: each store its own intercept (the within-store likelihood); covariates: the
    names of the store covariates of membership, Pr[C_i = c | z_i] = softmax_c(z_i'gamma_c)
    (none: pi_c for every store); covariate_penalty: L of the ridge on gamma (Concomitant.ridge; 0:
    maximum likelihood)."""
    sigma: str = "fixed"
    fixed: float = 1.0
    store_effects: bool = False
    covariates: tuple = ()
    covariate_penalty: float = 0.0

    @property
    def mode(self):
        return SIGMA[self.sigma]


class SigmaMode(NamedTuple):
    """One way of treating sigma: how many sigmas it estimates for K segments, which of them is
    segment c's (the Hessian's map), its variance update in the M-step, whether a segment must
    hold at least P + 1 weighted weeks (else sigma_c -> 0 and the likelihood is unbounded: _thin),
    its words."""
    count: object            # K -> number of sigma parameters
    index: object            # K -> (K,) the sigma parameter of each segment
    variance: object         # (stats, rss (..., K), weeks (..., K), ok) -> sigma^2 (..., K)
    needs_weeks: bool
    words: str


def _variance_fixed(stats, rss, weeks, ok):
    return np.full(rss.shape, stats.model.fixed ** 2)


def _variance_common(stats, rss, weeks, ok):
    """sigma^2 = sum_ic w_ic R_ic / sum_i m_i, the same for every segment."""
    return np.repeat(rss.sum(axis=-1, keepdims=True) / stats.m.sum(), rss.shape[-1], axis=-1)


def _variance_segment(stats, rss, weeks, ok):
    """sigma_c^2 = sum_i w_ic R_ic / sum_i w_ic m_i."""
    return np.where(ok, rss / np.maximum(weeks, TINY), stats.pooled_s2)


SIGMA = {
    "fixed": SigmaMode(lambda K: 0, lambda K: np.zeros(K, dtype=int), _variance_fixed, False,
                       "sigma fixed at {fixed:g}"),
    "common": SigmaMode(lambda K: 1, lambda K: np.zeros(K, dtype=int), _variance_common, False,
                        "one sigma estimated for all segments"),
    "segment": SigmaMode(lambda K: K, lambda K: np.arange(K), _variance_segment, True,
                         "one sigma estimated per segment"),
}


class Shares:
    """How stores are in segments without covariates (flexmix's FLXPconstant): Pr[C_i = c] = pi_c
    for every store. A fit's member is pi (K,) (or a batch (..., K)); its free parameters are
    eta_c = log(pi_c / pi_K), c < K, the last segment the reference: pi = softmax(eta, 0)."""
    Z = scale = None
    names = ()
    width = 1                                    # z_i = 1
    penalty = 0.0                                # no ridge: EM's objective is log L

    def log_prior(self, pi):
        """log Pr[C_i = c] (..., K, 1); an empty segment (pi_c = 0) gets -inf, so that its
        posterior is 0 without a NaN."""
        return np.log(pi, out=np.full(pi.shape, -np.inf), where=pi > 0)[..., None]

    def fit(self, W, pi):
        """The M-step's member: pi_c = mean_i w_ic, as the M-step has it."""
        return pi

    def shares(self, pi):
        """Each segment's share of the stores a priori (..., K): pi itself."""
        return pi

    def separates(self, pi):
        """Shares separate no segment."""
        return False

    def df(self, K):
        return K - 1

    def reported(self, K):
        """The member's entries the standard errors report (pi_1..pi_K)."""
        return K

    def reference(self, pi):
        return pi.shape[-1] - 1

    def empty(self, pi):
        """True where a segment holds no share: no Newton step and no standard error there."""
        return pi.min() < EMPTY_SHARE

    def valid(self, pi):
        """(...,) True where a batch's pi is a point of the model (no negative share)."""
        return (pi >= 0).all(axis=-1)

    def moved(self, pi, step):
        """pi moved by a step in eta."""
        K = len(pi)
        logits = np.append(np.log(pi[:K - 1]) - np.log(pi[K - 1]) + step, 0.0)
        new_pi = np.exp(logits - logits.max())
        return new_pi / new_pi.sum()

    def terms(self, pi, W, WV):
        """_score_hessian's membership parts: each store's score in eta (N, K - 1), and the
        Hessian's (theta, tau)-eta block (K Q, K - 1) and eta-eta block before its - sum_i g_i g_i'
        term (Concomitant.terms with pi_i = pi and z_i = 1: the sums over stores in closed form)."""
        N, K = W.shape
        free = _others(K, self.reference(pi))
        w = W[:, free]
        p, m = pi[free], w.sum(axis=0)                            # m: expected segment sizes
        cross = WV.sum(axis=0)[:, :, None] * (np.eye(K)[:, free] - p)[:, None, :]
        eta = np.diag(m - N * p) - np.outer(m, p) - np.outer(p, m) + 2 * N * np.outer(p, p)
        return w - p, cross.reshape(K * WV.shape[2], K - 1), eta

    def identified(self, pi):
        """(free parameters,) True for those with a finite maximum: every one."""
        return np.ones(len(pi) - 1, dtype=bool)

    def delta(self, pi):
        """d pi / d eta (K, K - 1), the delta method's map: pi_c (1[c = d] - pi_d)."""
        return (np.diag(pi) - np.outer(pi, pi))[:, :len(pi) - 1]

    def errors(self, pi, se, se_sigma):
        """(se of pi (K,), se of sigma) as Params carries them."""
        return se, se_sigma

    def canonical(self, pi):
        """(pi as a Fit reports it, {segment: covariates that separate it}): pi itself, none."""
        return pi, {}


class Concomitant(NamedTuple):
    """How stores are in segments with covariates of membership (flexmix's FLXPmultinom):
    Pr[C_i = c | z_i] = softmax_c(z_i'gamma_c), z_i = (1, the covariates standardised over the
    stores, (z - mean) / sd). Z (N, R): the z_i; scale: (mean (Q,), sd (Q,)) of the covariates as
    given; names: theirs; penalty: L >= 0 of the ridge on gamma (ridge; 0: maximum likelihood). A
    fit's member is gamma (K, R); its free parameters are the rows of the segments other than the
    reference (the largest a priori), relative to its row."""
    Z: np.ndarray
    scale: tuple
    names: tuple
    penalty: float = 0.0

    width = property(lambda self: self.Z.shape[1])

    def ridge(self, gamma):
        """(...,) what EM's objective subtracts from log L where penalty = L > 0:
            (L/2) sum_c sum_j (gamma_cj - mean_k gamma_kj)^2,   j over the covariates (not the intercept),
        the ridge (L/2) sum_c sum_j gamma_cj^2 of the symmetric parametrisation (glmnet's, scikit-learn's
        multinomial logit) at the row every segment may add (it is least at sum_c gamma_cj = 0): no
        segment is special, and gamma_cj, per sd of covariate j, is its coefficient in the given units
        times sd_j. The maximum is finite where covariates separate a segment, its gamma shrunk toward 0."""
        centred = gamma[..., 1:] - gamma[..., 1:].mean(axis=-2, keepdims=True)
        return 0.5 * self.penalty * (centred * centred).sum(axis=(-2, -1))

    def ridge_terms(self, gamma, reference):
        """The ridge's gradient ((K - 1) R,) and Hessian in the free rows against `reference`:
        L (gamma_c - mean_k gamma_k) without the intercept, and L (I - 11'/K) kron diag(0, 1, ..., 1)."""
        K = len(gamma)
        centred = gamma - gamma.mean(axis=0)
        centred[:, 0] = 0.0
        slopes = np.diag(np.r_[0.0, np.ones(self.width - 1)])
        return (self.penalty * centred[_others(K, reference)].ravel(),
                self.penalty * np.kron(np.eye(K - 1) - 1.0 / K, slopes))

    def log_prior(self, gamma):
        """(..., K, N) log pi_ic = z_i'gamma_c - log sum_k exp(z_i'gamma_k)."""
        eta = gamma @ self.Z.T
        return eta - _log_normalise(eta.copy())[1][..., None, :]

    def fit(self, W, pi=None):
        """gamma (..., K, R) maximising sum_i sum_c w_ic log pi_ic: a multinomial logit of the
        posteriors on Z (fractional responses), by Newton's method from gamma = 0, which the
        concave objective lets converge; the segment with the most weight is the reference (its
        row 0). Where covariates separate a segment the maximum is at infinity: gamma grows until
        a step gains less than rounding, and the Fit says so (Fit.separated). With a penalty the
        objective less the ridge is maximised (Newton with the ridge's Hessian added): a finite
        maximum. (From 0 each time, not from the last gamma: from there a separated gamma grows at
        every EM step, and EM crawls along its ray.) A batch of W is fitted together, each logit
        stopping on its own."""
        shape, (N, K), R = W.shape[:-2], W.shape[-2:], self.width
        W = W.reshape((-1, N, K))
        B = len(W)
        if K == 1:
            return np.zeros(shape + (K, R))
        order = np.argsort(-W.sum(axis=1), axis=1, kind="stable")        # the reference, most weight, first
        free = order[:, 1:]                                                # (B, K - 1)
        rows = np.arange(B)[:, None]
        gamma = np.zeros((B, K, R))
        w_free = np.take_along_axis(W, free[:, None, :], axis=2)           # (B, N, K - 1)

        def value(W, gamma):
            found = (W.swapaxes(1, 2) * self.log_prior(gamma)).sum(axis=(1, 2))
            return found - self.ridge(gamma) if self.penalty else found
        current = value(W, gamma)
        ridge_hessian = self.ridge_terms(gamma[0], 0)[1] if self.penalty else None    # the same at every gamma
        active = np.ones(B, dtype=bool)
        for _ in range(GAMMA_STEPS):
            at = np.flatnonzero(active)
            if not len(at):
                break
            p = np.take_along_axis(np.exp(self.log_prior(gamma[at])), free[at, :, None], axis=1).swapaxes(1, 2)
            grad = ((w_free[at] - p).swapaxes(1, 2) @ self.Z).reshape(len(at), -1)        # (b, (K - 1) R)
            information = _multinomial_information(self.Z, p)
            if self.penalty:                     # the ridge's gradient and Hessian in the free rows
                centred = gamma[at] - gamma[at].mean(axis=1, keepdims=True)
                centred[..., 0] = 0.0
                grad = grad - self.penalty * np.take_along_axis(centred, free[at, :, None], axis=1).reshape(len(at), -1)
                information = information + ridge_hessian
            step = _least_squares(information, grad)
            gains = (grad * step).sum(axis=1)
            going = gains > ROUNDING * np.maximum(1.0, np.abs(current[at]))
            active[at[~going]] = False
            at, step = at[going], step[going]
            for _ in range(NEWTON_HALVINGS):
                if not len(at):
                    break
                new = gamma[at].copy()
                new[rows[:len(at)], free[at]] += step.reshape(len(at), K - 1, R)
                new_value = value(W[at], new)
                better = new_value >= current[at]
                gamma[at[better]], current[at[better]] = new[better], new_value[better]
                at, step = at[~better], step[~better] / 2
            active[at] = False                   # no halving gained: at its maximum, to rounding
        return gamma.reshape(shape + (K, R))
    def shares(self, gamma):
        """Each segment's share of the stores a priori (..., K): the mean over stores of pi_ic."""
        return np.exp(self.log_prior(gamma)).mean(axis=-1)


    def df(self, K):
        return (K - 1) * self.width

    reported = df

    def reference(self, gamma):
        """The segment against which log-odds are parameters: the largest (most stores a priori), so
        that a small segment that covariates separate does not make every other coefficient infinite."""
        return int(np.argmax(np.exp(self.log_prior(gamma)).mean(axis=1)))

    def empty(self, gamma):
        return False

    def valid(self, gamma):
        return np.ones(gamma.shape[:-2], dtype=bool)

    def moved(self, gamma, step):
        """gamma moved by a step in the free rows, relative to the reference segment."""
        K = len(gamma)
        reference = self.reference(gamma)
        free = _others(K, reference)
        new = np.zeros(gamma.shape)
        new[free] = gamma[free] - gamma[reference] + step.reshape(K - 1, self.width)
        return new

    def terms(self, gamma, W, WV):
        """_score_hessian's membership parts: each store's score (N, (K - 1) R), and the Hessian's
        (theta, tau)-gamma block (K Q, (K - 1) R) and gamma-gamma block before the - sum_i g_i g_i'
        term: s_ic = (e_c - pi_i) kron z_i, d2 log pi_ic = -(diag(pi_i) - pi_i pi_i') kron z_i z_i'
        over the free segments, summed with the weights w_ic."""
        N, K = W.shape
        free = _others(K, self.reference(gamma))
        w = W[:, free]
        Z, R = self.Z, self.width
        p = np.exp(self.log_prior(gamma)).T[:, free]                 # (N, K - 1)
        A = np.eye(K)[:, free] - p[:, None, :]                       # (N, K, K - 1): 1[c = d] - pi_id
        cross = ((WV[:, :, :, None] * A[:, :, None, :]).reshape(N, -1).T @ Z).reshape(K * WV.shape[2], (K - 1) * R)
        C = ((w - p)[:, :, None] * np.eye(K - 1) - w[:, :, None] * p[:, None, :] - p[:, :, None] * w[:, None, :]
             + 2 * p[:, :, None] * p[:, None, :])
        return ((w - p)[:, :, None] * Z[:, None, :]).reshape(N, -1), cross, _kron_sum(C, Z)

    def beyond(self, gamma):
        """(K, R) True where gamma, against the reference segment, is beyond GAMMA_LIMIT: the
        covariates separate that segment (its gamma has no finite maximum)."""
        return np.abs(gamma - gamma[self.reference(gamma)]) > GAMMA_LIMIT

    def separates(self, gamma):
        """True where the covariates separate a segment (beyond) and the model has no ridge."""
        return not self.penalty and bool(self.beyond(gamma).any())

    def identified(self, gamma):
        """(free parameters,) True for those with a finite maximum: not of a separated segment (every
        one with a penalty)."""
        held = self.beyond(gamma)[_others(len(gamma), self.reference(gamma))].any(axis=1) & (self.penalty == 0)
        return np.repeat(~held, self.width)

    def delta(self, gamma):
        """The free rows of gamma against the reference are the parameters themselves."""
        return np.eye(self.df(len(gamma)))

    def errors(self, gamma, se, se_sigma):
        """(se of pi: none, se of sigma, se of gamma (K, R), NaN in the reference's row)."""
        se_gamma = np.full(gamma.shape, np.nan)
        se_gamma[_others(len(gamma), self.reference(gamma))] = se.reshape(len(gamma) - 1, self.width)
        return np.full(len(gamma), np.nan), se_sigma, se_gamma

    def canonical(self, gamma):
        """(gamma against the reference segment, {segment: the covariates that separate it}; none with a
        penalty, whose maximum is finite)."""
        gamma = gamma - gamma[self.reference(gamma)]
        at = self.beyond(gamma) & (self.penalty == 0)
        return gamma, {c: [(("intercept",) + tuple(self.names))[r] for r in np.flatnonzero(at[c])]
                       for c in range(len(gamma)) if at[c].any()}

    def covariates(self):
        """(N, Q) the covariates in the units given."""
        mean, sd = self.scale
        return self.Z[:, 1:] * sd + mean


SHARES = Shares()


class _Unpacks:
    """A result that unpacks as the assignment's tuple (the attributes named in _unpacks) and
    carries the rest as attributes."""
    _unpacks = ()

    def __iter__(self):
        return iter([getattr(self, name) for name in self._unpacks])

    def __getitem__(self, j):
        return tuple(self)[j]

    def __len__(self):
        return len(self._unpacks)


class Params(_Unpacks):
    """theta (K, P), pi (K,), sigma (K,) and, with covariates of membership, gamma (K, R): unpacks
    as (theta, pi). MStep returns it, and StandardErrors returns their standard errors in the
    same form (NaN where not estimated), with kind (what standard errors: "model-based", or
    store-clustered "CR3" or "CR1") and df (of t for their intervals: N - 1 stores; None: normal)."""
    _unpacks = ("theta", "pi")
    kind, df = "model-based", None

    def __init__(self, theta, pi, sigma, gamma=None):
        self.theta, self.pi, self.sigma, self.gamma = theta, pi, sigma, gamma

    def __repr__(self):
        return f"Params(theta={self.theta.tolist()}, pi={self.pi.tolist()}, sigma={self.sigma.tolist()})"


class Fit(_Unpacks):
    """A fitted mixture, in the manner of a statsmodels result. Unpacks as (theta, pi, loglik).

    theta (K, P), pi (K,), sigma (K,), loglik (of exactly these parameters, in this order),
    W (N, K) posteriors, n_iter, converged, model, names (of theta's columns); n_params, n_obs,
    aic, bic, icl, entropy, aic3, caic, sabic; se (a Params of standard errors, computed on first
    use) and se_robust (store-clustered, CR3); search (what the search did: results.json's record) and
    ends (the runs of its starts); with covariates of membership gamma (K, R), prior (N, K),
    separated and without_covariates (the Fit without them); penalised_loglik, loglik less the
    ridge on gamma where the model has a covariate penalty (the objective EM maximised then; else
    loglik); log_sales(X); summary(). Segments
    are in canonical order: increasing price coefficient (most price-sensitive first)."""
    _unpacks = ("theta", "pi", "loglik")

    def __init__(self, run, stats, names=None, search=None, ends=(), separated=None, without_covariates=None):
        self.theta, self.membership, self.sigma, self.loglik, self.W, self.n_iter, self.converged = run
        self._stats, self.model = stats, stats.model
        self.penalised_loglik = self.loglik                # a run's loglik is EM's objective (_e_step)
        if stats.membership.penalty:
            self.loglik = self.loglik + float(stats.membership.ridge(self.membership))
        self.names = list(names) if names else [f"x{j}" for j in stats.columns]      # X's columns
        self.search, self.ends = search, list(ends)
        self.separated = separated or {}          # with covariates: {segment: entries beyond GAMMA_LIMIT}
        self.without_covariates = without_covariates
        self.gamma = self.membership if stats.membership.names else None
        self.prior = np.exp(np.broadcast_to(stats.membership.log_prior(self.membership),
                                            (len(self.theta), len(self.W)))).T
        self.pi = self.prior.mean(axis=0) if stats.membership.names else self.membership
        self._se, self._se_robust = None, None

    K = property(lambda self: len(self.pi))
    n_obs = property(lambda self: int(self._stats.n.sum()))
    n_params = property(lambda self: self.K * self.theta.shape[1] + self._stats.membership.df(self.K)
                        + self.model.mode.count(self.K))
    aic = property(lambda self: 2 * self.n_params - 2 * self.loglik)
    bic = property(lambda self: self.n_params * math.log(self.n_obs) - 2 * self.loglik)
    aic3 = property(lambda self: 3 * self.n_params - 2 * self.loglik)
    caic = property(lambda self: self.n_params * (math.log(self.n_obs) + 1) - 2 * self.loglik)
    sabic = property(lambda self: self.n_params * math.log((self.n_obs + 2) / 24) - 2 * self.loglik)
    llf = property(lambda self: self.loglik)

    @property
    def classification_entropy(self):
        """EN = -sum_ic w_ic log w_ic."""
        W = self.W[self.W > 0]
        return float(-np.sum(W * np.log(W)))

    icl = property(lambda self: self.bic + 2 * self.classification_entropy)
    entropy = property(lambda self: 1.0 - self.classification_entropy / (len(self.W) * math.log(self.K))
                       if self.K > 1 else 1.0)

    @property
    def se(self):
        if self._se is None:
            self._se = _standard_errors(self._stats, _run_of(self))
        return self._se

    @property
    def se_robust(self):
        """Store-clustered standard errors (CR3, the one-step jackknife over stores: _covariance), a
        Params like se: right when a store's weekly errors are autocorrelated (promotions,
        stock-piling), as long as stores are independent; their intervals use t on .df = N - 1
        degrees of freedom."""
        if self._se_robust is None:
            self._se_robust = _standard_errors(self._stats, _run_of(self), robust=CLUSTERED)
        return self._se_robust

    def log_sales(self, X):
        """Predicted log sales (T, K) of each segment at regressors X (T, P): the columns of the X
        the fit was estimated from. With store effects theta holds the slopes only: the
        prediction is then each segment's change in log sales relative to the store's own level
        (X's constant column is ignored)."""
        X = _check_new_X(_array(X, "X"), self._stats, "X")
        return X[:, list(self._stats.columns)] @ self.theta.T

    def summary(self):
        """The report's table of this fit."""
        return "\n".join(_fit_lines(_model_summary(self), self.model.sigma != "fixed"))

    def __repr__(self):
        return f"<Fit K={self.K} loglik={self.loglik:.6f} bic={self.bic:.3f} ({_describe(self.model)})>"


class Search(NamedTuple):
    """How hard Estimate searches: n_init starts (k-means++ on the stores' own coefficients, drawn
    with seed; None draws fresh ones), each EM run to a certified maximum within tol, or
    max_iter iterations."""
    n_init: int = N_INIT
    seed: int = None
    tol: float = TOL
    max_iter: int = MAX_ITER


class Progress(NamedTuple):
    """What a long run says as it goes: progress(event) with kind "starts" (done of total starts
    of K's search, done 0 before the first), "moves" (a round of K's split-and-merge moves),
    "reading" (done percent of a large file reduced) or "panels" (done of total panels of a
    simulation test, what it tests)."""
    kind: str
    K: int = None
    done: float = None
    total: int = None
    what: str = ""


# ---------------------------------------------------------------------------------------------
# The assignment's five functions (and standard errors)
# ---------------------------------------------------------------------------------------------

def LogL(theta, pi, y, X, sigma=1.0, store_effects=False):
    """Observed-data log-likelihood sum_i log sum_c pi_c f(y_i | theta_c, sigma_c), a float.
    sigma: one value or one per segment. With store effects theta holds the slopes only and
    this is the within-store likelihood (README)."""
    stats, params = _given(y, X, theta, pi, sigma, store_effects)
    return _e_step(stats, *params)[1]


def EStep(theta, pi, y, X, sigma=1.0, store_effects=False):
    """(N, K) matrix W of posterior probabilities W[i, c] = Pr[C_i = c | y_i, X, theta, pi, sigma]."""
    stats, params = _given(y, X, theta, pi, sigma, store_effects)
    return _e_step(stats, *params)[0]


def MStep(y, X, W, sigma=1.0, store_effects=False):
    """Params (unpacks as (theta (K, P), pi (K,)); .sigma (K,)) maximising the expected
    complete-data log-likelihood given the (N, K) posteriors W: K weighted least-squares fits,
    pi_c = mean_i W[i, c], and sigma as the model says. A segment with no weight gets pi_c = 0
    and the pooled least-squares theta and sigma."""
    stats = _statistics(_wide_sums(y, X), _model(sigma, store_effects))
    return Params(*_m_step(stats, _check_W(W, len(stats.n))))


def EM(K, y, X, tol=TOL, max_iter=MAX_ITER, seed=None, accelerate=True, sigma=1.0, store_effects=False):
    """One EM run from a k-means++ start drawn with `seed`; a Fit (unpacks as (theta, pi, loglik)).
    accelerate=True (the default) takes Newton steps where the log-likelihood is locally concave
    and SQUAREM steps elsewhere, each only where it raises the likelihood, and stops at a certified
    maximum; accelerate=False is plain EM, stopped by the classic rule (see _stopped)."""
    stats = _statistics(_wide_sums(y, X), _model(sigma, store_effects))
    _check_K(K, len(stats.n))
    _check_run(tol, max_iter)
    _check_flag(accelerate, "accelerate")
    start = _first(_kmeanspp_starts(stats, _store_coefficients(stats), K, _random(seed), 1))
    with _one_blas_thread(len(stats.n)):
        run = _run_em(stats, start, tol, max_iter, accelerate)
        run = _polish(stats, run) if accelerate else run
    return _finished(stats, run, "EM")


def Estimate(K, y, X, n_init=N_INIT, seed=None, tol=TOL, max_iter=MAX_ITER, sigma=1.0, store_effects=False):
    """The maximum likelihood estimate with K segments: the best of n_init EM runs from k-means++
    starts, improved by split-and-merge moves until none helps; a Fit (unpacks as (theta, pi,
    loglik)). Same seed, same result."""
    stats = _statistics(_wide_sums(y, X), _model(sigma, store_effects))
    return _search(stats, K, Search(n_init, seed, tol, max_iter))


def StandardErrors(theta, pi=None, y=None, X=None, sigma=1.0, store_effects=False):
    """Standard errors at a maximum, from the observed information: a Params, which unpacks as
    (se_theta (K, P), se_pi (K,)), with .sigma (NaN where sigma is fixed). NaN where the
    information is singular (an empty or duplicated segment). StandardErrors(fit) takes a Fit of
    any model; StandardErrors(theta, pi, y, X) is the assignment's form, sigma fixed."""
    if isinstance(theta, Fit):
        return theta.se
    if y is None or X is None:
        raise InputError("StandardErrors takes a Fit, or theta, pi, y and X")
    stats, params = _given(y, X, theta, pi, sigma, store_effects)
    if np.ptp(params[2]) > 0:
        raise InputError("StandardErrors(theta, pi, y, X, sigma) is for a fixed sigma (one value); "
                         "for estimated sigmas pass the Fit: StandardErrors(fit)")
    stats = stats._replace(model=stats.model._replace(fixed=float(params[2][0])))
    return _standard_errors(stats, _Run(*params, *_e_step(stats, *params)[::-1], 0, True))


# ---------------------------------------------------------------------------------------------
# Arguments, one check each (the API and the command line share them)
# ---------------------------------------------------------------------------------------------

def _whole(value, name, low, high=None, why=""):
    """value as an int in [low, high], or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        span = f"from {low:,} to {high:,}" if high is not None else f">= {low}"
        raise InputError(f"{name} must be a whole number {span}{why}; got {value!r}")
    return int(value)


def _check_flag(value, name):
    """A flag must be True or False: a string such as "False" would be taken as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _check_K(K, N, where=None):
    """K from 1 to N/2: a segment of fewer than two stores on average cannot be told from a
    store's own fit, and the search for such K is hopeless."""
    where = where or f"the {N} stores in y"
    K = _whole(K, "K (segments)", 1)
    if K > 1 and K > N // 2:
        raise InputError(f"K = {K} segments for {where}: at most K = {max(N // 2, 1)} (two stores a "
                         "segment on average); more cannot be told apart from each store's own fit")
    return K


def _check_run(tol, max_iter, n_init=1, seed=None):
    """tol, max_iter, n_init and seed of a run or a search."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) \
            or not (MIN_TOL <= tol < math.inf):
        raise InputError(f"tol must be a number from {MIN_TOL:g} (what a log-likelihood's rounding lets "
                         f"us measure) up; got {tol!r}")
    _whole(max_iter, "max_iter", 1)
    _whole(n_init, "n_init", 1, MAX_STARTS, " (each start is a whole EM run; 10 to 100 are plenty)")
    if seed is not None:
        _whole(seed, "seed", 0)


def _model(sigma=1.0, store_effects=False, covariates=(), covariate_penalty=0.0):
    """The Model of the options sigma (a positive number, "common" or "segment"),
    store_effects (True or False), covariates (names of covariates of membership) and
    covariate_penalty (L >= 0 of the ridge on their gamma; 0: none)."""
    _check_flag(store_effects, "store_effects")
    covariates = tuple(_names(covariates, "covariates"))
    if len(set(covariates)) < len(covariates):
        raise InputError(f"covariates must be distinct names; got {list(covariates)}")
    penalty = _penalty(covariate_penalty)
    if penalty and not covariates:
        raise InputError(f"covariate_penalty = {penalty:g} is a ridge on the gamma of covariates of membership: "
                         "give covariates too (or covariate_penalty = 0)")
    if isinstance(sigma, str) and sigma in SIGMA and sigma != "fixed":
        return Model(sigma, 1.0, bool(store_effects), covariates, penalty)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not SIGMA_RANGE[0] <= sigma <= SIGMA_RANGE[1]:
        raise InputError(f"sigma must be 'common', 'segment' or a number from {SIGMA_RANGE[0]:g} to "
                         f"{SIGMA_RANGE[1]:g} (sigma fixed at it); got {sigma!r}")
    return Model("fixed", float(sigma), bool(store_effects), covariates, penalty)


def _penalty(value, name="covariate_penalty"):
    """value as a float L from 0 to VALUE_LIMIT (the ridge on gamma per sd), or an InputError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value <= VALUE_LIMIT:
        raise InputError(f"{name} must be a number >= 0 (L of the ridge on gamma per sd of each covariate; 0: none, "
                         f"maximum likelihood); got {value!r}")
    return float(value)


def _array(value, name):
    """value as a float array, or ValueError naming the argument."""
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an array of numbers; got {type(value).__name__} "
                         f"{_shown(repr(value), 2 * CELL_SHOWN)}") from None


def _check_parameters(stats, theta, pi, sigma):
    """(theta (K, P), pi (K,), sigma (K,)) from the caller's values, or ValueError: pi a
    probability vector, theta K*P finite values (flat or K x P), sigma one or K positive values,
    none so large that its square overflows."""
    P = stats.P
    pi = _array(pi, "pi").ravel()
    if pi.size == 0 or not np.all(np.isfinite(pi)) or (pi < 0).any() or abs(pi.sum() - 1) > PROBABILITY_SUM:
        raise InputError(f"pi must be a probability vector (entries >= 0 summing to 1); got {pi}")
    K = pi.size
    theta = _array(theta, "theta")
    if theta.size != K * P or theta.ndim not in (1, 2) or (theta.ndim == 2 and theta.shape != (K, P)):
        extra = " (with store effects, X's intercept column is dropped)" if stats.model.store_effects else ""
        raise InputError(f"theta has shape {theta.shape}; with K = {K} segments (the length of pi) "
                         f"and P = {P} coefficients{extra} it must have K*P = {K * P} entries, flat or K x P")
    if not np.all(np.abs(theta) <= VALUE_LIMIT):
        raise InputError(f"theta must be finite numbers no larger than {VALUE_LIMIT:g} in size; got {theta.ravel()}")
    if isinstance(sigma, str):
        raise InputError(f"sigma must be given as numbers here (one, or one per segment); got {sigma!r}")
    sigma = _array(sigma, "sigma").ravel()
    if sigma.size not in (1, K) or not np.all((sigma >= SIGMA_RANGE[0]) & (sigma <= SIGMA_RANGE[1])):
        raise InputError(f"sigma must be one number or K = {K} numbers from {SIGMA_RANGE[0]:g} to "
                         f"{SIGMA_RANGE[1]:g}; got {sigma}")
    return theta.reshape(K, P), pi, np.broadcast_to(sigma, (K,)).copy()


def _given(y, X, theta, pi, sigma, store_effects):
    """Stats and checked (theta, pi, sigma) for parameters given by the caller."""
    stats = _statistics(_wide_sums(y, X), _model(1.0, store_effects))
    return stats, _check_parameters(stats, theta, pi, sigma)


def _check_W(W, N):
    W = _array(W, "W")
    if W.ndim != 2 or W.shape[0] != N or W.shape[1] < 1:
        raise InputError(f"W must be N x K with N = {N} stores (the columns of y); got shape {W.shape}")
    if not np.all((W >= 0) & (W <= 1)):
        raise InputError("W must hold probabilities between 0 and 1")
    bad = np.abs(W.sum(axis=1) - 1) > PROBABILITY_SUM
    if bad.any():
        raise InputError(f"each row of W must sum to 1; row {int(np.argmax(bad))} sums to "
                         f"{W[np.argmax(bad)].sum():.6g}")
    return W


def _check_new_X(X, stats, name, per_store=False):
    """X of new weeks, (T, P) or with per_store (T, M, P) too, with the columns of the X the fit
    was estimated from; else an InputError naming the argument and the columns expected."""
    width = stats.width or stats.P
    if X.ndim not in ((2, 3) if per_store else (2,)) or X.shape[-1] != width:
        shape = "T x P or T x M x P" if per_store else "T x P"
        raise InputError(f"{name} must be {shape} with the {width} columns of the X the fit was estimated from "
                         f"(intercept, log price, ... as given; with store effects the constant one is ignored); "
                         f"got shape {X.shape}")
    return X


def _random(seed):
    """The starts' own random generator (never the global state): Python's, so that a run of the
    program needs no numpy.random (slow to import)."""
    if seed is not None:
        _whole(seed, "seed", 0)
    return random.Random(None if seed is None else int(seed))


# ---------------------------------------------------------------------------------------------
# The panel as the model sees it: per-store sufficient statistics
# ---------------------------------------------------------------------------------------------

class Sums(NamedTuple):
    """Per-store sums over observed weeks, from a wide panel or a long file's rows alike.
    n (N,) weeks, XtX (N, P*P) row by row, Xty (N, P), yty (N,), sx (N, P) = sum of x, sy (N,)."""
    n: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: np.ndarray
    sx: np.ndarray
    sy: np.ndarray


class Stats(NamedTuple):
    """The panel as a model sees it.

    n (N,)      observed weeks of each store
    m (N,)      weeks that carry information on theta and sigma: n_i, or n_i - 1 with store
                effects (one is spent on a_i)
    const (N,)  the part of log f(y_i | c) free of the parameters: -(m_i/2) log 2 pi, and
                -(1/2) log n_i more with store effects
    XtX (N, P*P), Xty (N, P), yty (N,): X_i'X_i, X_i'y_i, y_i'y_i (within-store centred with
                store effects, whose intercept column is then dropped)
    price       the column of theta that is the price coefficient (the first that varies)
    columns     the columns of X that the statistics keep (all, or all but the intercept)
    pooled_s2   residual variance of pooled least squares (K = 1): the scale of sigma^2
    model       the Model
    membership  how stores are in segments: SHARES (pi_c for every store) or, with covariates of
                membership, a Concomitant (Z, their scale, their names)
    moments     (N, P*P + P + 4): _moments, the kernel's per-store statistics side by side
    width       the number of columns of X as given (before store effects drop the constant one)
    """
    n: np.ndarray
    m: np.ndarray
    const: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: np.ndarray
    price: int
    columns: tuple
    pooled_s2: float
    model: Model
    membership: object = None
    moments: np.ndarray = None
    width: int = None

    P = property(lambda self: self.Xty.shape[1])
    Z = property(lambda self: self.membership.Z)                 # with covariates: 1 and the standardised ones
    z_scale = property(lambda self: self.membership.scale)       # ... and their (mean, sd) as given


def _wide_sums(y, X):
    """Sums of a wide panel: y (T, N) with NaN where unobserved, X (T, P) or (T, N, P). Stores are
    taken in blocks of about BATCH_CELLS cells, so that no temporary is the size of y."""
    y, X = _array(y, "y"), _array(X, "X")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or X.ndim not in (2, 3):
        raise InputError(f"y must be T x N and X must be T x P or T x N x P; got shapes {y.shape} and {X.shape}")
    T, N = y.shape
    if X.shape[0] != T:
        raise InputError(f"y has {T} rows (weeks) but X has {X.shape[0]}: they must match")
    if X.ndim == 3 and X.shape[1] != N:
        raise InputError(f"X is T x N x P with N = {X.shape[1]} but y has {N} columns (stores)")
    if N == 0 or T == 0 or X.shape[-1] == 0:
        raise InputError(f"the panel is empty: y has shape {y.shape}, X {X.shape}")
    block = max(1, BATCH_CELLS // T)
    parts = [_wide_block(y[:, a:a + block], X[:, a:a + block] if X.ndim == 3 else X, a)
             for a in range(0, N, block)]
    if X.ndim == 2:
        rows = ~np.isnan(y).all(axis=1)           # weeks some store observes: X must be finite there
        if not np.all(np.isfinite(X[rows])):
            raise InputError("X has a missing or infinite entry in a week where y is observed "
                             "(a missing, zero or negative price?)")
    _check_scale(np.array([part[1] for part in parts]), np.array([part[2] for part in parts]))
    sums = [np.concatenate([part[0][k] for part in parts]) for k in range(6)]
    return Sums(*sums)


def _wide_block(y, X, first):
    """(the Sums fields, max |y|, max |X|) of a block of stores (columns first, first + 1, ...)."""
    if np.isinf(y).any():
        raise InputError("y has an infinite entry (log of a zero sale?)")
    observed = ~np.isnan(y)
    n = observed.sum(axis=0)
    if (n == 0).any():
        store = first + int(np.argmax(n == 0))
        raise InputError(f"store {store} (column {store} of y) has no observed week")
    T, N = y.shape
    P = X.shape[-1]
    y0 = np.where(observed, y, 0.0)
    if X.ndim == 2:
        X0 = np.where(np.isfinite(X), X, 0.0)
        if observed.all():                       # the usual case: every store shares X'X
            XtX = np.tile((X0.T @ X0).ravel(), (N, 1))
            sx = np.tile(X0.sum(axis=0), (N, 1))
        else:
            XtX = observed.T.astype(float) @ (X0[:, :, None] * X0[:, None, :]).reshape(T, P * P)
            sx = observed.T.astype(float) @ X0
        Xty = y0.T @ X0
        top_x = np.abs(X0[observed.any(axis=1)]).max() if observed.any() else 0.0
    else:
        if not np.all(np.isfinite(X[observed])):
            raise InputError("X has a missing or infinite entry in a week where y is observed "
                             "(a missing, zero or negative price?)")
        X0 = np.where(observed[:, :, None], X, 0.0)
        XtX = np.einsum("tnp,tnq->npq", X0, X0).reshape(N, P * P)
        Xty = np.einsum("tnp,tn->np", X0, y0)
        sx = X0.sum(axis=0)
        top_x = np.abs(X0).max()
    return ((n.astype(float), XtX, Xty, np.einsum("tn,tn->n", y0, y0), sx, y0.sum(axis=0)),
            np.abs(y0).max(), top_x)


def _check_scale(y, X):
    """ValueError for values whose squares overflow; a warning where y cannot be log sales (raw
    sales passed by mistake give nonsense segments). y, X: the observed values (or their largest
    in size)."""
    for name, values in (("y", y), ("X", X)):
        top = np.abs(values).max() if values.size else 0.0
        if top > VALUE_LIMIT:
            raise InputError(f"{name} has values as large as {top:.3g}: too large to estimate from "
                             "(y is log sales, X holds 1, log price, ...)")
    top = np.abs(y).max() if y.size else 0.0
    if top > LOG_SALES_LIMIT:
        _warn(f"y has values as large as {top:.6g}: y must be log sales, and no log of a real quantity "
              f"exceeds {LOG_SALES_LIMIT:g} (e^{LOG_SALES_LIMIT:g} = {math.exp(LOG_SALES_LIMIT):.2g}). Raw sales? Pass "
              "np.log(sales)")


def _spread(sums):
    """(P,) True for each column of X whose standard deviation over the observed cells is at
    least SPREAD_FLOOR x max(1, |mean|): a column that varies less (a price that changes by
    1e-6, or by one rounding unit) cannot be told from a constant."""
    P = sums.Xty.shape[1]
    total = sums.n.sum()
    mean = sums.sx.sum(axis=0) / total
    variance = np.maximum(sums.XtX.sum(axis=0).reshape(P, P).diagonal() / total - mean ** 2, 0.0)
    return np.sqrt(variance) >= SPREAD_FLOOR * np.maximum(1.0, np.abs(mean))


def _moments(XtX, Xty, yty, m, const):
    """(N, P*P + P + 4): X_i'X_i, X_i'y_i, y_i'y_i, m_i, const_i and 1 side by side, so that the
    kernel's log densities (_rss, _log_joint) and the M-step's weighted sums over stores are each
    one matrix product."""
    return np.column_stack([XtX, Xty, yty, m, const, np.ones(len(yty))])


def _statistics(sums, model, names=None, covariates=None):
    """Stats of a model from a panel's Sums. With store effects, the within-store transform
    (README, "Store fixed effects"):
        X_i'X_i - s_i s_i'/n_i,  X_i'y_i - s_i t_i/n_i,  y_i'y_i - t_i^2/n_i,
    with s_i, t_i the store's sums of x and y; a column of X that is constant is the intercept
    and is dropped, one that is constant within every store (but not overall) is refused.
    names: the columns' names, for messages (default: "column j of X"). covariates (N, Q): the
    stores' covariates of membership, in the order of model.covariates (_covariates)."""
    n, XtX, Xty, yty, sx, sy = sums
    N, P = Xty.shape
    name = (lambda j: repr(names[j])) if names else (lambda j: f"column {j} of X")
    varies = _spread(sums)
    constant = [j for j in range(P) if not varies[j]]
    if len(constant) > 1:                        # one constant column is the intercept
        raise InputError(f"{name(constant[-1])} is constant (or varies too little to tell from a "
                         "constant), so its effect cannot be estimated: a price that never changes cannot "
                         "identify a price effect")
    columns, m, offset = tuple(range(P)), n, np.zeros(N)
    if model.store_effects:
        columns = tuple(j for j in range(P) if varies[j])
        if not columns:
            raise InputError("with store effects X needs a column that varies (the log price)")
        Q = len(columns)
        m, offset, XtX, Xty, yty = _within(sums, columns)
        within = XtX.sum(axis=0).reshape(Q, Q).diagonal()
        raw = sums.XtX.sum(axis=0).reshape(P, P).diagonal()[list(columns)]
        absorbed = within <= ABSORBED * raw
        if absorbed.any():
            raise InputError(f"{name(columns[int(np.argmax(absorbed))])} is constant within every store (or "
                             "every store has one week): the store effects absorb it, so it cannot be estimated")
        price, P = 0, Q
    else:
        price = int(np.argmax(varies)) if varies.any() else 0
    A = XtX.sum(axis=0).reshape(P, P)
    scale = np.sqrt(np.maximum(A.diagonal(), TINY))
    if not A.diagonal().min() > 0 or P > 1 and np.linalg.eigvalsh(A / np.outer(scale, scale)).min() < COLLINEAR:
        raise InputError(f"the columns of X are collinear (rank < {P}): a price that never changes, or "
                         "changes too little to tell from a constant, cannot identify a price effect")
    pooled_s2 = _pooled(XtX, Xty, yty, m)[1]
    if not pooled_s2 > EXACT_FIT * max(yty.sum() / max(m.sum(), 1.0), TINY):
        raise InputError("every observation is fitted exactly by one regression (are all sales equal?): "
                         "there is nothing to tell segments apart")
    const = offset - 0.5 * LOG_2PI * m
    stats = Stats(n, m, const, XtX, Xty, yty, price, columns, pooled_s2, model,
                  moments=_moments(XtX, Xty, yty, m, const), width=sums.Xty.shape[1], membership=SHARES)
    return _covariates(stats, covariates) if model.covariates else stats


def _within(sums, columns):
    """The within-store transform of Sums, keeping X's `columns`: (m, offset, XtX, Xty, yty)."""
    n, XtX, Xty, yty, sx, sy = sums
    N, P = Xty.shape
    keep = np.array(columns)
    s = sx[:, keep]
    raw = XtX.reshape(N, P, P)[:, keep][:, :, keep]
    XtX = raw - s[:, :, None] * s[:, None, :] / n[:, None, None]
    Xty = Xty[:, keep] - s * (sy / n)[:, None]
    flat = np.diagonal(XtX, axis1=1, axis2=2) <= ABSORBED * np.diagonal(raw, axis1=1, axis2=2)
    if flat.any():                               # constant within the store: exactly none of it, not rounding
        XtX[flat[:, :, None] | flat[:, None, :]] = 0.0
        Xty[flat] = 0.0
    return n - 1.0, -0.5 * np.log(n), XtX.reshape(N, len(keep) ** 2), Xty, np.maximum(yty - sy * sy / n, 0.0)


def _covariates(stats, z):
    """stats with the membership on covariates z (N, Q), Z = [1, (z - mean) / sd] (Concomitant), or an
    InputError naming a covariate that is missing, constant, or a combination of the others."""
    names = stats.model.covariates
    z = _array(z, "covariates")
    N = len(stats.n)
    if z.shape != (N, len(names)):
        raise InputError(f"covariates must be N x Q = {N} x {len(names)} (a row a store, a column each of "
                         f"{', '.join(names)}); got shape {z.shape}")
    for j, name in enumerate(names):
        if not np.all(np.isfinite(z[:, j])):
            raise InputError(f"covariate {name!r} is missing (or not finite) for store {int(np.argmax(~np.isfinite(z[:, j])))}")
    mean, sd = z.mean(axis=0), z.std(axis=0)
    for j, name in enumerate(names):
        if not sd[j] >= SPREAD_FLOOR * max(1.0, abs(mean[j])):
            raise InputError(f"covariate {name!r} is the same for every store: it cannot tell segments apart")
    Z = np.column_stack([np.ones(N), (z - mean) / sd])
    if np.linalg.eigvalsh(Z.T @ Z / N).min() < COLLINEAR:
        raise InputError(f"the covariates {', '.join(names)} are collinear (one is a combination of the "
                         "others, or there are more covariates than stores): drop one")
    return stats._replace(membership=Concomitant(Z, (mean, sd), names, stats.model.covariate_penalty))


# ---------------------------------------------------------------------------------------------
# The kernel: log densities, E-step, M-step (README, "The model" and "EM")
# ---------------------------------------------------------------------------------------------

def _terms(theta):
    """(rows, P*P + P + 1): (theta_c theta_c' flat, -2 theta_c, 1) for each row of theta (..., K, P),
    which dotted with a store's moments (X_i'X_i, X_i'y_i, y_i'y_i) gives R_ic (_rss)."""
    P = theta.shape[-1]
    flat = theta.reshape(-1, P)
    return np.concatenate([(flat[:, :, None] * flat[:, None, :]).reshape(-1, P * P), -2.0 * flat,
                           np.ones((len(flat), 1))], axis=1)


def _rss(stats, theta):
    """(..., K, N) residual sums of squares of store i's weeks under segment c's coefficients:
        R_ic = y_i'y_i - 2 theta_c'X_i'y_i + theta_c'X_i'X_i theta_c,
    one product for a whole batch: _terms(theta) . (X_i'X_i, X_i'y_i, y_i'y_i)."""
    D = theta.shape[-1] ** 2 + theta.shape[-1] + 1
    return (_terms(theta) @ stats.moments[:, :D].T).reshape(theta.shape[:-1] + (len(stats.yty),))


def _log_joint(stats, theta, pi, sigma):
    """(..., K, N) log(pi_ic f(y_i | c)) = log pi_ic + const_i - m_i log sigma_c - R_ic / (2 sigma_c^2):
    all but log pi_ic in one product, _rss's terms scaled by -1 / (2 sigma_c^2) beside -log sigma_c
    and 1, dotted with (X_i'X_i, X_i'y_i, y_i'y_i, m_i, const_i)."""
    D = theta.shape[-1] ** 2 + theta.shape[-1] + 1
    scale = (-0.5 / (sigma * sigma)).reshape(-1, 1)
    coefficients = np.concatenate([scale * _terms(theta), -np.log(sigma).reshape(-1, 1), np.ones_like(scale)], axis=1)
    out = (coefficients @ stats.moments[:, :D + 2].T).reshape(theta.shape[:-1] + (len(stats.yty),))
    out += stats.membership.log_prior(pi)
    return out


def _log_normalise(a):
    """(exp(a) / sum_c exp(a), log sum_c exp(a)) over the segments' axis (-2) of a (..., K, N),
    in log space: the largest term is taken out before exp, so nothing overflows. a is
    overwritten (it becomes the first result)."""
    top = a.max(axis=-2)
    a -= top[..., None, :]
    np.exp(a, out=a)
    total = a.sum(axis=-2)
    a /= total[..., None, :]
    return a, top + np.log(total)


def _e_step(stats, theta, pi, sigma):
    """Posteriors W (..., N, K), W[i, c] = pi_c f_ic / sum_k pi_k f_ik, and EM's objective (a float,
    or (...,) for a batch): the log-likelihood sum_i log sum_c pi_c f_ic, less the ridge on gamma
    (Concomitant.ridge) where the model has a covariate penalty."""
    W, log_p = _log_normalise(_log_joint(stats, theta, pi, sigma))
    loglik = log_p.sum(axis=-1)
    if stats.membership.penalty:
        loglik = loglik - stats.membership.ridge(pi)
    return W.swapaxes(-1, -2), (float(loglik) if loglik.ndim == 0 else loglik)


def _pooled(XtX, Xty, yty=None, m=None):
    """Least squares over all stores and weeks from per-store sums (the K = 1 estimate): theta (P,),
    the minimum-norm solution where the pooled design is singular; with yty and m, also the
    residual variance (theta, sum_i R_i(theta) / sum_i m_i)."""
    P = Xty.shape[1]
    A, b = XtX.sum(axis=0).reshape(P, P), Xty.sum(axis=0)
    try:
        theta = np.linalg.solve(A, b)
    except np.linalg.LinAlgError:
        theta = np.linalg.lstsq(A, b, rcond=None)[0]
    if yty is None:
        return theta
    return theta, max(yty.sum() - theta @ b, 0.0) / max(m.sum(), 1.0)


def _start_sigma(stats, K):
    """sigma (K,) at the start of a run: the fixed value, or the pooled residual sd."""
    fixed = stats.model.sigma == "fixed"
    return np.full(K, stats.model.fixed if fixed else math.sqrt(stats.pooled_s2))


def _thin(stats, weeks):
    """(..., K) True for a segment too thin to estimate its own sigma: fewer than P + 1 weighted
    weeks (weeks = sum_i w_ic m_i), so that sigma_c -> 0 and an unbounded likelihood are in
    reach. Only where sigma is per segment (SigmaMode.needs_weeks)."""
    return (weeks < stats.P + 1) & stats.model.mode.needs_weeks


def _admissible(stats, W):
    """False where a segment of W (..., N, K) is _thin."""
    return not stats.model.mode.needs_weeks or not _thin(stats, W.swapaxes(-1, -2) @ stats.m).any()


def _m_step(stats, W):
    """(theta, pi, sigma) maximising the expected complete-data log-likelihood for W (..., N, K):
        theta_c = (sum_i w_ic X_i'X_i)^-1 sum_i w_ic X_i'y_i,   pi_c = mean_i w_ic,
        sigma_c^2 as the model's SigmaMode says, from sum_i w_ic R_ic = sum_i w_ic y_i'y_i - theta_c'b_c.
    A segment with no weight (or a singular weighted X'X, or too thin: _thin) cannot be
    estimated: it gets pi_c = 0 and the pooled theta and sigma, so nothing downstream sees a NaN."""
    P, N = stats.P, len(stats.n)
    sums = W.swapaxes(-1, -2) @ stats.moments          # (..., K, P*P + P + 4): sum_i w_ic (X_i'X_i, X_i'y_i, ...)
    A = sums[..., :P * P].reshape(sums.shape[:-1] + (P, P))
    b, yy, weeks, size = sums[..., P * P:P * P + P], sums[..., -4], sums[..., -3], sums[..., -1]
    theta = _solve(A, b, size > 0)
    pi = size / N
    ok = np.isfinite(theta).all(axis=-1) & (pi > 0) & ~_thin(stats, weeks)
    if not ok.all():
        theta[~ok] = _pooled(stats.XtX, stats.Xty)
        pi = np.where(ok, pi, 0.0)
        pi = pi / pi.sum(axis=-1, keepdims=True)
    rss = yy - (theta * b).sum(axis=-1)                      # sum_i w_ic R_ic, as A_c theta_c = b_c
    if not ok.all():                                         # not so for the pooled theta
        rss += (theta * ((A @ theta[..., None])[..., 0] - b)).sum(axis=-1)
    variance = stats.model.mode.variance(stats, rss, weeks, ok)
    member = stats.membership.fit(W, pi)
    return theta, member, np.sqrt(np.maximum(variance, VARIANCE_FLOOR * stats.pooled_s2))


def _others(K, reference):
    """The segments other than the reference one, whose log-odds against it are parameters."""
    return np.array([c for c in range(K) if c != reference], dtype=int)


def _multinomial_information(Z, p):
    """(..., (K-1)R, (K-1)R): sum_i (diag(p_i) - p_i p_i') kron z_i z_i', the information of a
    multinomial logit with probabilities p (..., N, K - 1) of the free segments on Z (N, R)."""
    return _kron_sum(p[..., :, None] * np.eye(p.shape[-1]) - p[..., :, None] * p[..., None, :], Z)


def _kron_sum(C, Z):
    """sum_i C_i kron z_i z_i' for C (..., N, D, D) and Z (N, R): (..., D R, D R)."""
    *batch, N, D, _ = C.shape
    R = Z.shape[1]
    if R == 1:                                   # z_i = 1: without covariates
        return C.sum(axis=-3)
    out = C.reshape(*batch, N, D * D).swapaxes(-1, -2) @ (Z[:, :, None] * Z[:, None, :]).reshape(N, R * R)
    return out.reshape(*batch, D, D, R, R).swapaxes(-3, -2).reshape(*batch, D * R, D * R)


def _least_squares(A, g):
    """The least-squares solution of least norm of A x = g for each of a batch of symmetric
    positive semi-definite A (B, D, D), g (B, D), as lstsq gives it: through the eigenvalues of
    A above eps D times the largest (a separated segment's directions have none); where every
    eigenvalue is, that is the solution of A x = g, which a solve gives at less cost."""
    def kept(values):                            # (B, D) ascending: the eigenvalues the solution uses
        return values > np.finfo(float).eps * A.shape[-1] * np.maximum(values[:, -1:], TINY)
    x, full = np.empty_like(g), kept(np.linalg.eigvalsh(A)).all(axis=1)
    if full.any():
        x[full] = np.linalg.solve(A[full], g[full][..., None])[..., 0]
    if not full.all():
        values, vectors = np.linalg.eigh(A[~full])
        keep = kept(values)
        inverse = np.where(keep, 1 / np.where(keep, values, 1.0), 0.0)
        x[~full] = (vectors @ (inverse * (vectors.swapaxes(1, 2) @ g[~full][..., None])[..., 0])[..., None])[..., 0]
    return x


def _solve(A, b, weighted):
    """theta (..., K, P) solving A theta = b for each segment; NaN where A is singular or the
    segment has no weight. Empty segments are set aside so that one solve does the batch."""
    if not weighted.all():
        A = np.where(weighted[..., None, None], A, np.eye(A.shape[-1]))
    try:
        theta = np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:                # a singular system with weight: one by one
        theta = np.full(b.shape, np.nan)
        for index in np.ndindex(b.shape[:-1]):
            try:
                theta[index] = np.linalg.solve(A[index], b[index])
            except np.linalg.LinAlgError:
                pass
    theta[~weighted] = np.nan
    return theta


# ---------------------------------------------------------------------------------------------
# Score and observed information: Newton steps near a maximum, standard errors at it
# ---------------------------------------------------------------------------------------------

def _score_hessian(stats, theta, pi, sigma, W, per_store=False):
    """Gradient (D,) and Hessian (D, D) of the log-likelihood at (theta, pi, sigma), W its E-step;
    with per_store, each store's score g_i (N, D) in place of the gradient (the sandwich's).

    Parameters psi = (theta_1, ..., theta_K, tau, eta_1, ..., eta_{K-1}): tau the log sigmas the
    model estimates (SigmaMode.count: none, one or K), pi = softmax(eta_1, ..., eta_{K-1}, 0).
    With s_ic the gradient of log(pi_c f_ic) and g_i = sum_c w_ic s_ic the store's score, Louis'
    identity gives (README, "Standard errors")
        H = sum_i sum_c w_ic (d2 log(pi_c f_ic) + s_ic s_ic') - sum_i g_i g_i',
    where s_ic is v_ic = (u_ic / sigma_c^2, R_ic / sigma_c^2 - m_i) in segment c's block
    (theta_c, tau_c), u_ic = X_i'y_i - X_i'X_i theta_c, and (e_c - pi_i) kron z_i in the eta
    block (the membership's terms; with covariates of membership eta_c = gamma_c - gamma_ref). It is
    computed with each segment its own tau_c and then mapped into psi by SigmaMode.index (a
    common tau is the sum of the K segments' ones). Where the model has a covariate penalty, the
    gradient and H are those of EM's objective, log L less the ridge (Concomitant.ridge_terms);
    per_store's scores stay those of log L.
    """
    N, K = W.shape
    P, mode = stats.P, stats.model.mode
    KP, nt = K * P, mode.count(K)
    Q = P + (nt > 0)                                              # a segment's block
    s2 = sigma * sigma
    u = stats.Xty[:, None, :] - (stats.XtX.reshape(N, P, P) @ theta.T).swapaxes(1, 2)   # (N, K, P)
    V = np.empty((N, K, Q))                                       # v_ic
    np.divide(u, s2[:, None], out=V[:, :, :P])
    if nt:
        R = _rss(stats, theta).T                                  # (N, K)
        V[:, :, P] = R / s2 - stats.m[:, None]
    WV = W[:, :, None] * V
    g_eta, cross, eta = stats.membership.terms(pi, W, WV)
    D = g_eta.shape[1]                                            # membership parameters
    G = np.concatenate([WV.reshape(N, K * Q), g_eta], axis=1)     # g_i, per segment
    H = -(G.T @ G)
    within = np.matmul(WV.transpose(1, 2, 0), V.transpose(1, 0, 2))            # sum_i w v v'
    within[:, :P, :P] -= (W.T @ stats.XtX).reshape(K, P, P) / s2[:, None, None]
    if nt:                                                        # second derivatives in tau_c
        cross_tau = 2 * np.einsum("nk,nkp->kp", W, u) / s2[:, None]
        within[:, :P, P] -= cross_tau
        within[:, P, :P] -= cross_tau
        within[:, P, P] -= 2 * (W * R).sum(axis=0) / s2
    blocks = np.arange(K * Q).reshape(K, Q)
    H[blocks[:, :, None], blocks[:, None, :]] += within
    H[:K * Q, K * Q:] += cross
    H[K * Q:, :K * Q] = H[:K * Q, K * Q:].T
    H[K * Q:, K * Q:] += eta
    total = G.sum(axis=0)
    if stats.membership.penalty:
        ridge_grad, ridge_hessian = stats.membership.ridge_terms(pi, stats.membership.reference(pi))
        total[K * Q:] -= ridge_grad
        H[K * Q:, K * Q:] -= ridge_hessian
    to = _psi_places(stats, K, D)
    if len(to) == KP + nt + D:                                    # a permutation: no sums needed
        order = np.argsort(to)
        return (G[:, order] if per_store else total[order]), H[np.ix_(order, order)]
    M = np.zeros((len(to), KP + nt + D))                          # a common sigma: K into one
    M[np.arange(len(to)), to] = 1.0
    return (G @ M if per_store else total @ M), M.T @ H @ M


def _psi_places(stats, K, D):
    """Each parameter's place in psi, in _score_hessian's order (segment c's theta_c and tau_c, then
    the D membership parameters): a common tau takes the K segments' places as one."""
    P, mode = stats.P, stats.model.mode
    KP, nt = K * P, mode.count(K)
    to = np.arange(KP).reshape(K, P)
    if nt:
        to = np.column_stack([to, KP + mode.index(K)])
    return np.concatenate([to.ravel(), KP + nt + np.arange(D)])


def _store_hessians(stats, theta, pi, sigma, W, stores):
    """(n, D, D): the Hessian H_i of each store's own log-likelihood, log sum_c pi_ic f_ic, for the
    stores of the slice `stores`, in _score_hessian's psi: its H store by store, the same Louis
    identity before the sum over i (sum_i H_i = H). The membership's part is Concomitant.terms'
    store by store (without covariates z_i = 1 and pi_i = pi, as Shares.terms)."""
    N, K = W.shape
    P, mode, membership = stats.P, stats.model.mode, stats.membership
    nt = mode.count(K)
    Q = P + (nt > 0)
    free = _others(K, membership.reference(pi))
    p = np.exp(np.broadcast_to(membership.log_prior(pi), (K, N))[free][:, stores]).T      # (n, K - 1)
    Z = np.ones((N, 1)) if membership.Z is None else membership.Z
    Z, W, XtX = Z[stores], W[stores], stats.XtX[stores].reshape(-1, P, P)
    n, R = Z.shape
    s2 = sigma * sigma
    u = stats.Xty[stores][:, None, :] - (XtX @ theta.T).swapaxes(1, 2)        # (n, K, P)
    V = np.empty((n, K, Q))
    np.divide(u, s2[:, None], out=V[:, :, :P])
    if nt:
        rss = _rss(stats._replace(moments=stats.moments[stores], yty=stats.yty[stores]), theta).T
        V[:, :, P] = rss / s2 - stats.m[stores][:, None]
    WV = W[:, :, None] * V
    w = W[:, free]
    g_eta = ((w - p)[:, :, None] * Z[:, None, :]).reshape(n, -1)
    G = np.concatenate([WV.reshape(n, K * Q), g_eta], axis=1)
    H = -G[:, :, None] * G[:, None, :]
    within = WV[:, :, :, None] * V[:, :, None, :]                             # w v v'
    within[:, :, :P, :P] -= W[:, :, None, None] * XtX[:, None] / s2[:, None, None]
    if nt:
        cross_tau = 2 * W[:, :, None] * u / s2[:, None]
        within[:, :, :P, P] -= cross_tau
        within[:, :, P, :P] -= cross_tau
        within[:, :, P, P] -= 2 * W * rss / s2
    blocks = np.arange(K * Q).reshape(K, Q)
    H[:, blocks[:, :, None], blocks[:, None, :]] += within
    A = np.eye(K)[:, free] - p[:, None, :]                                    # (n, K, K - 1)
    cross = (WV[:, :, :, None, None] * A[:, :, None, :, None] * Z[:, None, None, None, :]).reshape(n, K * Q, -1)
    C = ((w - p)[:, :, None] * np.eye(K - 1) - w[:, :, None] * p[:, None, :] - p[:, :, None] * w[:, None, :]
         + 2 * p[:, :, None] * p[:, None, :])
    H[:, :K * Q, K * Q:] += cross
    H[:, K * Q:, :K * Q] += cross.swapaxes(1, 2)
    H[:, K * Q:, K * Q:] += (C[:, :, None, :, None] * Z[:, None, :, None, None] * Z[:, None, None, None, :]
                             ).reshape(n, (K - 1) * R, (K - 1) * R)
    to = _psi_places(stats, K, g_eta.shape[1])
    M = np.zeros((len(to), to.max() + 1))
    M[np.arange(len(to)), to] = 1.0
    return M.T @ H @ M


def _newton_direction(stats, theta, pi, sigma, W):
    """(step, decrement, flat) for psi at (theta, pi, sigma), or None where no step applies (an
    empty segment).

    Where -H is positive definite this is Newton's step -H^-1 g. Where it is not (on a ridge or
    near a saddle, where EM crawls) the step uses |eigenvalues| of -H, floored at FLAT times the
    largest (saddle-free Newton, Dauphin et al. 2014), which still points uphill. decrement =
    sum_k (v_k'g)^2 / max(lambda_k, floor) is twice the gain a concave quadratic model predicts;
    it is infinite where -H has a real negative curvature (a saddle: more to gain). flat is True
    where -H has flat directions (an over-fitted model: two equal segments); there the posteriors
    are not unique.
    """
    if stats.membership.empty(pi):
        return None
    grad, H = _score_hessian(stats, theta, pi, sigma, W)
    values, vectors = np.linalg.eigh(-H)
    top = np.abs(values).max()
    if not top > 0:
        return None
    along = vectors.T @ grad
    floor = FLAT * top
    step = vectors @ (along / np.maximum(np.abs(values), floor))
    decrement = float(along @ (along / np.maximum(values, floor))) if values.min() >= -floor else math.inf
    return step, decrement, bool(values.min() < floor)


def _moved(stats, theta, pi, sigma, step):
    """(theta, pi, sigma) moved by a step in psi = (theta, log sigma, eta)."""
    K, P = theta.shape
    KP, nt = K * P, stats.model.mode.count(K)
    new_sigma = sigma * np.exp(step[KP:KP + nt][stats.model.mode.index(K)]) if nt else sigma
    return theta + step[:KP].reshape(K, P), stats.membership.moved(pi, step[KP + nt:]), new_sigma


def _newton_step(stats, run):
    """A Newton step from a run's point (see _newton_direction), halved until the likelihood
    rises; None where no step applies or none goes uphill. Returns (theta, pi, sigma, W, loglik,
    decrement, flat)."""
    theta, pi, sigma, loglik, W = run[:5]
    direction = _newton_direction(stats, theta, pi, sigma, W)
    if direction is None:
        return None
    step, decrement, flat = direction
    for _ in range(NEWTON_HALVINGS):
        new = _moved(stats, theta, pi, sigma, step)
        if np.all(np.isfinite(new[0])) and new[2].min() > 0:
            new_W, new_loglik = _e_step(stats, *new)
            if new_loglik >= loglik - ROUNDING * abs(loglik) and _admissible(stats, new_W):
                return new + (new_W, new_loglik, decrement, flat)   # at the maximum: equal up to rounding
        step = step / 2
    return None


# ---------------------------------------------------------------------------------------------
# One EM run
# ---------------------------------------------------------------------------------------------

class _Run(NamedTuple):
    """One EM run's end: theta (K, P), pi (K,), sigma (K,), loglik, W (N, K), iterations, whether
    its stopping rule was met. A Fit is made of the search's best."""
    theta: np.ndarray
    pi: np.ndarray
    sigma: np.ndarray
    loglik: float
    W: np.ndarray
    n_iter: int
    converged: bool


def _run_em(stats, start, tol, max_iter, accelerate=True, known=(), gain=math.inf):
    """EM from start = (theta, pi, sigma) until _stopped; a _Run.

    Each iteration is an M-step and an E-step, or with accelerate an accelerated step in their
    place (_accelerated_step), which never gains less. known: converged runs; a run that reaches
    one of them (_same_point) ends there, as that maximum is certified already. gain: what the
    plain EM iteration that led to start added, if known (small: Newton is tried at once)."""
    theta, pi, sigma = start
    W, loglik = _e_step(stats, theta, pi, sigma)
    run = _Run(theta, pi, sigma, loglik, W, 0, False)
    for iteration in range(1, max_iter + 1):
        if gain < NEWTON_GAIN:
            for done in known:
                if _same_point(done, W, loglik):
                    return done._replace(n_iter=iteration - 1)
        step = _accelerated_step(stats, run, gain) if accelerate else None
        new = step[:5] if step else _em_step(stats, W)
        decrement, flat = step[5:] if step else (None, False)
        gain, moved = new[4] - loglik, np.abs(new[3] - W).max()
        theta, pi, sigma, W, loglik = new
        run = _Run(theta, pi, sigma, loglik, W, iteration, False)
        if _stopped(stats, run, gain, moved, decrement, flat, tol, accelerate):
            return run._replace(converged=True)
    return run


def _em_step(stats, W):
    """One plain EM iteration from posteriors W: (theta, pi, sigma, W, loglik)."""
    params = _m_step(stats, W)
    return params + _e_step(stats, *params)


def _accelerated_step(stats, run, gain):
    """Near a maximum (the last gain below NEWTON_GAIN) a Newton step, else (or where Newton
    does not go uphill) a SQUAREM step: (theta, pi, sigma, W, loglik, decrement or None, flat)."""
    newton = _newton_step(stats, run) if gain < NEWTON_GAIN else None
    return newton or _squarem_step(stats, run) + (None, False)


def _stopped(stats, run, gain, moved, decrement, flat, tol, accelerate):
    """EM's stopping rule.
    Accelerated: a certified maximum. The last step gained at most tol (or less than rounding),
    moved no posterior by more than tol (on a flat ridge, where posteriors are not unique, this
    is not asked) and Newton's decrement, twice the gain still in reach, is at most 2 tol.
    Plain EM has no certificate: it stops when an iteration gains less than tol x |log L| (the
    rule of flexmix and most EM code), which also ends a crawl along a ridge. So does a run whose
    covariates of membership separate a segment, after SEPARATED_STEPS iterations: its supremum
    lies at infinity, and the gains along that ray shrink like 1/t^2, so that there is nothing to
    certify and a certificate would take a million steps."""
    if not accelerate or run.n_iter >= SEPARATED_STEPS and stats.membership.separates(run.pi):
        return gain <= tol * abs(run.loglik)
    if not (gain <= max(tol, ROUNDING * abs(run.loglik)) and (flat or moved <= tol)):
        return False
    if decrement is None:
        decrement = _remaining_gain(stats, run)
    return decrement <= 2 * tol


def _remaining_gain(stats, run):
    """Newton decrement at a run's point; 0 where the log-likelihood is not locally concave (a
    saddle or an empty segment), where Newton has nothing to add."""
    direction = _newton_direction(stats, run.theta, run.pi, run.sigma, run.W)
    return 0.0 if direction is None or math.isinf(direction[1]) else direction[1]


def _squarem_step(stats, run):
    """One SQUAREM step (_squarem) from a run's point: (theta, pi, sigma, W, loglik)."""
    new = _squarem(stats, (run.theta[None], run.pi[None], run.sigma[None]), run.W[None])
    return tuple(part[0] for part in new[:4]) + (float(new[4][0]),)


def _squarem(stats, params, W):
    """One SQUAREM step (Varadhan & Roland 2008, SqS3) from each of a batch of points params =
    (theta (B, K, P), pi (B, K) or gamma (B, K, R), sigma (B, K)) with their posteriors W (B, N,
    K): two EM steps, extrapolated along their path in x = (theta, pi or gamma, sigma) by
    alpha = min(-|r| / |v|, -1), kept where valid (pi >= 0, sigma > 0, no _thin segment) with a
    log-likelihood at least that of the two plain steps; else alpha backs off halfway towards
    -1 (the two steps themselves), at most SQUAREM_BACKOFFS times. (gamma is identified up to a
    row added to all segments, and an extrapolation of such points is one too.) Returns the
    batch (theta, pi or gamma, sigma, W, loglik)."""
    one = _m_step(stats, W)
    two = _m_step(stats, _e_step(stats, *one)[0])
    W2, loglik2 = _e_step(stats, *two)
    out = list(two) + [W2, loglik2]

    def flat(point):
        return np.concatenate([part.reshape(len(part), -1) for part in point], axis=1)
    x0, x1, x2 = flat(params), flat(one), flat(two)
    r, v = x1 - x0, x2 - 2 * x1 + x0
    norm_v = np.sqrt((v * v).sum(axis=1))
    alpha = np.where(norm_v > 0, np.minimum(-np.sqrt((r * r).sum(axis=1)) / np.maximum(norm_v, TINY), -1.0), -1.0)
    ends = np.cumsum([0] + [part[0].size for part in two])
    for _ in range(SQUAREM_BACKOFFS):
        trying = np.flatnonzero(alpha <= -SQUAREM_REACH)        # alpha = -1 gives x2 itself
        if not len(trying):
            break
        a = alpha[trying][:, None]
        x = x0[trying] - 2 * a * r[trying] + a * a * v[trying]
        new = [x[:, ends[k]:ends[k + 1]].reshape((len(x),) + two[k].shape[1:]) for k in range(3)]
        valid = np.isfinite(x).all(axis=1) & (new[2] > 0).all(axis=1) & stats.membership.valid(new[1])
        if valid.any():
            at = trying[valid]
            new_W, new_loglik = _e_step(stats, *(part[valid] for part in new))
            ok = (new_loglik >= loglik2[at]) & ~_thin(stats, new_W.swapaxes(-1, -2) @ stats.m).any(axis=-1)
            for k in range(3):
                out[k][at[ok]] = new[k][valid][ok]
            out[3][at[ok]], out[4][at[ok]] = new_W[ok], new_loglik[ok]
            alpha[at[ok]] = -1.0
        alpha[trying] = np.where(alpha[trying] <= -SQUAREM_REACH, (alpha[trying] - 1) / 2, alpha[trying])
    return tuple(out)


def _same_point(run, W, loglik):
    """True where (W, loglik) is a converged run's point, whatever the segments' order: the same
    log-likelihood up to SAME_LOGLIK and every posterior within SAME_POSTERIOR of the run's in
    the matching segment (the M-step of W gives its theta)."""
    if not (run.converged and _same_loglik(loglik, run.loglik)):
        return False
    gaps = np.abs(W[:, :, None] - run.W[:, None, :]).max(axis=0)      # (K, K): segment a vs b
    match = gaps.argmin(axis=1)
    return len(set(match.tolist())) == len(match) and gaps[np.arange(len(match)), match].max() <= SAME_POSTERIOR


def _same_loglik(a, b):
    """True where two log-likelihoods are one maximum's: equal to SAME_LOGLIK, relative."""
    return abs(a - b) <= SAME_LOGLIK * max(1.0, abs(a))


def _polish(stats, run):
    """Up to POLISH_STEPS Newton steps from a converged run: Newton converges quadratically
    there, so the estimate becomes the maximum to machine precision, not merely within tol of
    it. Another step only where the last had more to gain than rounding (its decrement)."""
    for _ in range(POLISH_STEPS if run.converged else 0):
        step = _newton_step(stats, run)
        if step is None:
            break
        run = run._replace(theta=step[0], pi=step[1], sigma=step[2], W=step[3], loglik=step[4])
        if step[5] <= ROUNDING * abs(run.loglik):
            break
    return run


def _finished(stats, run, what, names=None, search=None, ends=(), without_covariates=None):
    """The Fit of a run: segments in canonical order (increasing price coefficient, ties broken
    by the other columns), then a last E-step, so that W and loglik are exactly those of the
    returned parameters in the returned order (LogL of them gives the same bits); warnings."""
    others = [j for j in range(stats.P) if j != stats.price]
    order = np.lexsort(run.theta[:, others[::-1] + [stats.price]].T)
    theta, pi, sigma = run.theta[order], run.pi[order], run.sigma[order]
    pi, held = stats.membership.canonical(pi)
    W, loglik = _e_step(stats, theta, pi, sigma)
    fit = Fit(_Run(theta, pi, sigma, loglik, W, run.n_iter, run.converged), stats, names, search, ends, held,
              without_covariates)
    if not fit.converged:
        _warn(f"{what} reached max_iter = {fit.n_iter} iterations before converging; "
              "the estimate may be short of the maximum", ConvergenceWarning)
    if fit.separated:
        _warn(f"{what}: {_separation_words(fit)}", RuntimeWarning)
    if fit.pi.min() == 0:
        _warn(f"{what} ended with an empty segment (pi_c = 0): the data support fewer "
              "segments from this start", RuntimeWarning)
    return fit


def _separation_words(fit):
    """One sentence on the segments that covariates of membership separate (Fit.separated)."""
    which = "; ".join(f"segment {c + 1} (by {', '.join(names)})" for c, names in fit.separated.items())
    return (f"the covariates separate {which}: its membership log-odds pass {GAMMA_LIMIT:g} per sd, so the "
            "likelihood has no finite maximum in gamma (its supremum is approached as gamma grows); the fit shows "
            "gamma where EM stopped gaining, without standard errors. Use fewer covariates or fewer segments, or a "
            "ridge on gamma, whose maximum is finite (--covariate-penalty L; covariate_penalty = L)")


def _run_of(fit):
    return _Run(fit.theta, fit.membership, fit.sigma, fit.penalised_loglik, fit.W, fit.n_iter, fit.converged)


def _one_blas_thread(N):
    """A context in which numpy's BLAS uses one thread (threadpoolctl, where installed): a fit's
    matrices are small, and threads cost more than they save until panels are large. The
    caller's process is as it was afterwards."""
    if N > BLAS_THREADS_FROM:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


# ---------------------------------------------------------------------------------------------
# The search for the global maximum (Estimate)
# ---------------------------------------------------------------------------------------------

def _search(stats, K, search=Search(), names=None, previous=None, progress=None):
    """The maximum likelihood Fit with K segments (steps above), searched as `search` says.
    previous: the Fit with fewer segments of a sweep; progress(Progress) hears of each start's
    run ("starts") and of each round of split-and-merge moves ("moves").

    More starts are never worse: the first N_INIT starts (the same draws whatever n_init is)
    are searched exactly as n_init = N_INIT searches them, then the rest, and the better end
    is kept. The Fit's .search records the work: the distinct maxima where the starts' runs
    ended, how many ended at each, and how many at the returned maximum."""
    K = _check_K(K, len(stats.n))
    n_init = search.n_init
    _check_run(search.tol, search.max_iter, n_init, search.seed)
    if stats.membership.names:
        return _search_covariates(stats, K, search, names, previous, progress)
    tick = (lambda done: progress(Progress("moves", K) if done is None else Progress("starts", K, done, n_init))) \
        if progress else None
    with _one_blas_thread(len(stats.n)):
        if K == 1:                        # one maximum, pooled least squares: one run finds it
            start = _pooled(stats.XtX, stats.Xty)[None], np.ones(1), _start_sigma(stats, 1)
            best = _polish(stats, _run_em(stats, start, search.tol, search.max_iter))
            return _finished(stats, best, "Estimate", names, _search_record([best], best))
        coefficients = _store_coefficients(stats)
        starts = _kmeanspp_starts(stats, coefficients, K, _random(search.seed), n_init)
        runs, best = [], None
        for part in (slice(0, N_INIT), slice(N_INIT, n_init)) if n_init > N_INIT else (slice(0, n_init),):
            more = _runs(stats, tuple(each[part] for each in starts), search, tick, len(runs))
            found = _climb(stats, coefficients, more, search, previous if best is None else None,
                           [best] if best is not None else [], tick)
            runs += more
            best = found if best is None or found.loglik > best.loglik else best
        best = _polish(stats, best)
    return _finished(stats, best, "Estimate", names, _search_record(runs, best), ends=runs)


def _search_covariates(stats, K, search, names, previous, progress):
    """With covariates of membership, searched as a model of its own:
      1. the model without them is searched as always (Fit.without_covariates), and EM with them
         runs from each distinct maximum its starts reached (the M-step of their posteriors: gamma
         the multinomial logit of W on Z), so the fit is never below the one without covariates;
      2. starts that the covariates suggest (_covariate_starts: k-means on the stores' own
         coefficients and covariates together, random gamma, segments drawn by random gamma),
         each made by one M-step of its posteriors, compete in a tournament, the first N_INIT of
         each kind apart from the rest (more starts are never worse);
      3. split-and-merge from the best and from the other maxima steps 1 and 2 reached within
         NEAR_TIE of it (_covariate_moves), gamma refitted after each move.
    The best end, polished. Fit.search counts the runs of step 1 and the starts of step 2."""
    plain = stats._replace(membership=SHARES, model=stats.model._replace(covariates=(), covariate_penalty=0.0))
    base = _search(plain, K, search, names, previous.without_covariates if previous is not None else None, progress)
    if K == 1:                                   # one segment: nothing to choose, so no membership to model
        return _finished(stats, _run_of(base)._replace(pi=np.zeros((1, stats.membership.width))), "Estimate", names,
                         base.search, without_covariates=base)
    starts = [base]
    for run in sorted(base.ends, key=lambda run: -run.loglik):
        if not any(_same_loglik(run.loglik, other.loglik) for other in starts):
            starts.append(run)
    coefficients = _store_coefficients(plain)
    suggested = _covariate_starts(stats, coefficients, base, K, _random(search.seed), search.n_init)
    with _one_blas_thread(len(stats.n)):
        runs = [_run_em(stats, _m_step(stats, start.W), search.tol, search.max_iter) for start in starts]
        best, reached = max(runs, key=lambda run: run.loglik), []
        for part in (slice(0, N_INIT), slice(N_INIT, search.n_init)) if search.n_init > N_INIT else (slice(0, None),):
            W = np.concatenate([each[part] for each in suggested])
            kinds = np.repeat(np.arange(len(suggested)), [len(each[part]) for each in suggested])
            found = _finalists(stats, _m_step(stats, W), kinds, COVARIATE_TOURNAMENT, search,
                               [run for run in runs + reached if run.converged], supported=True)
            reached += found
            best = max([best] + found, key=lambda run: run.loglik)
        near = [best] + [run for run in runs + reached if run.converged]
        best = _polish(stats, _covariate_moves(stats, plain, coefficients, near, search, progress))
    record = _search_record(runs, best)
    record["starts"] += sum(len(each) for each in suggested)
    return _finished(stats, best, "Estimate", names, record, without_covariates=base)


def _covariate_starts(stats, coefficients, base, K, rng, count):
    """Posteriors (count, N, K) of each of three kinds of start that the covariates suggest:
      k-means  a partition of the stores by k-means (KMEANS_STEPS of Lloyd's steps from k-means++
               centres) on their own coefficients and their covariates together, each column as
               ranks in [0, 1] (a store of few weeks has an extreme b_i), the covariates' columns
               weighted by a weight drawn uniformly on [0, 1] and by sqrt(P / Q) (as many
               columns of each);
      gamma    random log-odds per sd, gamma_c ~ N(0, I), with the segments of the best fit
               without covariates: W its E-step;
      labels   segments that the covariates alone draw: store i in segment c with probability
               softmax_c(z_i'gamma_c), gamma_c ~ N(0, LABEL_SPREAD^2 I), W the labels shrunk by
               LABEL_SHRINK towards 1/K (a better maximum can keep some segments of the fit
               without covariates and recast another around stores that its covariates pick).
    Each start's draws come from rng in turn, so the first starts are the same whatever count is."""
    N, P = coefficients.shape

    def ranks(a):                                # each column as ranks in [0, 1]
        return np.argsort(np.argsort(a, axis=0, kind="stable"), axis=0, kind="stable") / max(N - 1, 1)
    own, covariates = ranks(coefficients), ranks(stats.Z[:, 1:]) * math.sqrt(P / (stats.Z.shape[1] - 1))
    partitions, draws, labels = [], [], []
    for _ in range(count):
        features = np.column_stack([own, rng.random() * covariates])
        centres = features[[rng.randrange(N)]]
        for _ in range(K - 1):                   # k-means++: each centre drawn by squared distance
            nearest = ((features[:, None] - centres[None]) ** 2).sum(axis=-1).min(axis=1)
            at = np.searchsorted(np.cumsum(nearest), rng.random() * nearest.sum(), side="right")
            centres = np.vstack([centres, features[min(at, N - 1)]])
        for _ in range(KMEANS_STEPS):
            label = ((features[:, None] - centres[None]) ** 2).sum(axis=-1).argmin(axis=1)
            centres = np.array([features[label == c].mean(axis=0) if (label == c).any() else centres[c]
                                for c in range(K)])
        partitions.append(np.eye(K)[label])
        gamma = np.array([[rng.gauss(0.0, 1.0) for _ in range(stats.membership.width)] for _ in range(K)])
        draws.append(_e_step(stats, base.theta, gamma, base.sigma)[0])
        gamma = np.array([[rng.gauss(0.0, LABEL_SPREAD) for _ in range(stats.membership.width)] for _ in range(K)])
        chances = np.cumsum(np.exp(stats.membership.log_prior(gamma)).T, axis=1)   # (N, K)
        label = (chances < np.array([[rng.random()] for _ in range(N)]) * chances[:, -1:]).sum(axis=1)
        labels.append((1 - LABEL_SHRINK) * np.eye(K)[np.minimum(label, K - 1)] + LABEL_SHRINK / K)
    return np.array(partitions), np.array(draws), np.array(labels)


def _covariate_moves(stats, plain, coefficients, runs, search, progress=None):
    """Split-and-merge with covariates of membership: the moves of the model without them
    (_moves, from a run's segments with their shares of the posteriors), each made a start by the
    E-step without covariates and the M-step with them (gamma refitted to the moved posteriors),
    compete in a tournament. Best first over the maxima near the top: each round pools the moves
    from every maximum within NEAR_TIE of the best found so far that no round has moved from yet
    (the runs given, then the tournaments' ends: a better maximum may lie a move away from a lower
    one only), for at most MOVE_ROUNDS rounds. The best end. progress(Progress) hears of each round."""
    found, explored = list(runs), []
    best = max(found, key=lambda run: run.loglik)
    for _ in range(MOVE_ROUNDS):
        sources = []
        for run in sorted(found, key=lambda run: -run.loglik):
            if run.loglik >= best.loglik - NEAR_TIE and not any(
                    _same_loglik(run.loglik, other.loglik) for other in explored + sources):
                sources.append(run)
        if not sources:
            break
        if progress:
            progress(Progress("moves", best.theta.shape[0]))
        batches = [_moves(plain, coefficients, source._replace(pi=source.W.mean(axis=0))) for source in sources]
        moves = tuple(np.concatenate([batch[0][j] for batch in batches]) for j in range(3))
        kinds = np.concatenate([batch[1] for batch in batches])
        ends = _finalists(stats, _m_step(stats, _e_step(plain, *moves)[0]), kinds, COVARIATE_TOURNAMENT, search,
                          [run for run in found if run.converged], supported=True)
        explored += sources
        found += ends
        top = max(ends, key=lambda run: run.loglik)
        if top.loglik > best.loglik + search.tol:
            best = top._replace(n_iter=best.n_iter + top.n_iter)
    return best


def _climb(stats, coefficients, runs, search, previous=None, explored=(), progress=None):
    """Steps 3 and 4 from the best of some runs: grown from `previous` where it ends below it,
    then split-and-merge, from a near tie too."""
    K = runs[0].theta.shape[0]
    best = max(runs, key=lambda run: run.loglik)
    if previous is not None and previous.K < K and best.loglik < previous.loglik:
        grown = _run_of(previous)             # the fresh search ended below the last K: grow it
        while grown.theta.shape[0] < K:       # (a ridge is grown by split-and-merge: _regrown, _growth)
            redundant = _redundant(grown) is not None
            grown = _with_empty(stats, grown) if redundant else _grow(stats, coefficients, grown, search)
        best = max(best, grown, key=lambda run: run.loglik)
    second = [run for run in runs if best.loglik - NEAR_TIE <= run.loglik < best.loglik
              and not _same_loglik(run.loglik, best.loglik)]
    best = _split_and_merge(stats, coefficients, best, search, explored, progress)
    if second:                                # a near tie: moves from the other maximum too
        other = _split_and_merge(stats, coefficients, max(second, key=lambda run: run.loglik), search,
                                 list(explored) + [best], progress)
        best = max(best, other, key=lambda run: run.loglik)
    return best


def _search_record(runs, best):
    """What the search did: {"starts", "maxima": [[loglik, starts that ended there], ...] best
    first, "at_best": starts whose run ended at the returned maximum}. Log-likelihoods within
    SAME_LOGLIK (relative) are one maximum."""
    maxima = []
    for loglik in sorted((run.loglik for run in runs), reverse=True):
        if maxima and _same_loglik(loglik, maxima[-1][0]):
            maxima[-1][1] += 1
        else:
            maxima.append([loglik, 1])
    at_best = sum(count for loglik, count in maxima if _same_loglik(loglik, best.loglik))
    return {"starts": len(runs), "maxima": maxima, "at_best": at_best}


def _runs(stats, starts, search, progress=None, done=0):
    """Step 2: the starts' first, plain iterations together (far from a maximum they need no
    acceleration), then each run to its end; a list of _Run. done: starts run before these."""
    n_init, K = starts[0].shape[:2]
    warm_up = min(WARM_UP if n_init * K * len(stats.n) <= BATCH_LARGE else WARM_UP_LARGE, search.max_iter - 1)
    theta, pi, sigma, _, gain = _plain_em(stats, starts, warm_up)
    runs = []
    for j in range(n_init):
        run = _run_em(stats, (theta[j], pi[j], sigma[j]), search.tol, search.max_iter - warm_up,
                      known=[run for run in runs if run.converged], gain=gain[j])
        runs.append(run._replace(n_iter=run.n_iter + warm_up))
        if progress:
            progress(done + j + 1)
    return runs


def _first(batch):
    """The first start of a batch, as (theta, pi, sigma)."""
    return tuple(part[0] for part in batch)


def _plain_em(stats, batch, iterations):
    """`iterations` plain EM steps from each of B starts, batch = (theta (B, K, P), pi (B, K),
    sigma (B, K)), all at once. Returns theta, pi, sigma, loglik (B,) at the end and gain (B,),
    what the last iteration added."""
    return _batched_em(stats, batch, iterations, accelerated=False)


def _squarem_em(stats, batch, iterations):
    """`iterations` SQUAREM steps (_squarem) from each of B starts, all at once: a batch as
    _plain_em takes and returns it. A few such steps tell where a move leads far better than as
    many plain ones: some moves crawl on a plateau under plain EM before they climb above
    everything else."""
    return _batched_em(stats, batch, iterations, accelerated=True)


def _batched_em(stats, batch, iterations, accelerated):
    """_plain_em and _squarem_em: the starts in chunks of about BATCH_CELLS cells."""
    chunk = max(1, BATCH_CELLS // (batch[0].shape[1] * len(stats.n)))
    parts = []
    for first in range(0, len(batch[0]), chunk):
        params = tuple(part[first:first + chunk] for part in batch)
        W, loglik = _e_step(stats, *params)
        before = np.full(len(loglik), -np.inf)
        for _ in range(iterations):
            before = loglik
            if accelerated:
                *params, W, loglik = _squarem(stats, params, W)
            else:
                params = _m_step(stats, W)
                W, loglik = _e_step(stats, *params)
        parts.append(tuple(params) + (loglik, loglik - before))
    return tuple(np.concatenate(part) for part in zip(*parts))


def _store_coefficients(stats):
    """Each store's own least-squares coefficients b_i (N, P), the sufficient statistic of
    store i for theta: R_ic = R_i + (b_i - theta_c)' X_i'X_i (b_i - theta_c) (_own_fits: the
    minimum-norm solution where the store does not identify every coefficient)."""
    return _own_fits(stats.XtX, stats.Xty, stats.yty, stats.m).b


class OwnFits(NamedTuple):
    """Each store's own least-squares regression: b (N, P) its coefficients (the minimum-norm
    solution where X_i'X_i is not of full rank); usable (N,): the store identifies every
    coefficient with weeks to spare (more weeks that carry information than coefficients, and
    X_i'X_i of full rank), as the diagnostics that set stores beside segments need; s2 (N,) its
    residual variance R_i(b_i) / (m_i - P) and var (N, P) the variances of b_i, NaN where not
    usable. short (N,): no more weeks than coefficients; flat (N,) the first column constant
    within the store (zero X_i'X_i diagonal), -1 where none; collinear (N,): columns that vary
    but are collinear (a regressor constant within the store beside the intercept)."""
    usable: np.ndarray
    b: np.ndarray
    s2: np.ndarray
    var: np.ndarray
    short: np.ndarray
    flat: np.ndarray
    collinear: np.ndarray


def _own_fits(XtX, Xty, yty, m):
    """OwnFits of stores with sums XtX (N, P*P), Xty (N, P), yty (N,) and m (N,) informative weeks.
    Rank is judged in correlation form, by the rule of the pooled design (COLLINEAR), so that a
    store whose promotion never changes is set aside rather than inverted."""
    N, P = Xty.shape
    A = XtX.reshape(N, P, P)
    d = np.diagonal(A, axis1=1, axis2=2)
    root = np.sqrt(np.where(d > 0, d, 1.0))
    flat = np.where((d <= 0).any(axis=1), np.argmax(d <= 0, axis=1), -1)
    full = (flat < 0) & (np.linalg.eigvalsh(A / (root[:, :, None] * root[:, None, :]))[:, 0] > COLLINEAR)
    short = m <= P
    collinear = (flat < 0) & ~short & ~full
    usable = full & ~short
    b, var, s2 = np.empty((N, P)), np.full((N, P), np.nan), np.full(N, np.nan)
    b[full] = np.linalg.solve(A[full], Xty[full][:, :, None])[:, :, 0]
    b[~full] = (np.linalg.pinv(A[~full]) @ Xty[~full][:, :, None])[:, :, 0]
    if usable.any():
        s2[usable] = np.maximum(yty[usable] - (b[usable] * Xty[usable]).sum(axis=1), 0.0) / (m[usable] - P)
        var[usable] = s2[usable][:, None] * np.diagonal(np.linalg.inv(A[usable]), axis1=1, axis2=2)
    return OwnFits(usable, b, s2, var, short, flat, collinear)


def _distances(stats, coefficients, centres):
    """(N, K) matrix of (b_i - theta_c)' X_i'X_i (b_i - theta_c) for centres (K, P): the residual
    sum of squares that store i adds when its own coefficients b_i are replaced by theta_c."""
    P = coefficients.shape[1]
    gap = coefficients[:, None, :] - centres[None]                     # (N, K, P)
    return np.einsum("nkp,npq,nkq->nk", gap, stats.XtX.reshape(-1, P, P), gap)


def _kmeanspp_starts(stats, coefficients, K, rng, count):
    """Step 1: `count` k-means++ seedings (Arthur & Vassilvitskii 2007) on the stores' own
    coefficients, in the likelihood's metric: K stores' b_i each, each drawn with probability
    proportional to its distance (b_i - theta)' X_i'X_i (b_i - theta) to the nearest one drawn
    before; pi uniform, sigma fixed or the pooled residual sd. theta (count, K, P), pi (count, K),
    sigma (count, K). Each start's draws come from rng in turn."""
    N, P = coefficients.shape
    draws = [[rng.randrange(N)] + [rng.random() for _ in range(K - 1)] for _ in range(count)]
    chosen = np.array([[first] for first, *_ in draws], dtype=int)              # (count, 1)
    nearest = np.full((count, N), np.inf)
    XtX = stats.XtX.reshape(N, P, P)
    for k in range(1, K):
        gap = coefficients[None] - coefficients[chosen[:, -1]][:, None]          # (count, N, P)
        nearest = np.minimum(nearest, np.einsum("snp,npq,snq->sn", gap, XtX, gap))
        total = nearest.sum(axis=1)
        point = np.array([start[k] for start in draws])
        draw = (np.cumsum(nearest, axis=1) <= (point * total)[:, None]).sum(axis=1)
        fallback = (point * N).astype(int)                    # every store drawn already: any
        chosen = np.column_stack([chosen, np.where((total > 0) & (draw < N), draw, fallback)])
    return coefficients[chosen], np.full((count, K), 1.0 / K), np.tile(_start_sigma(stats, K), (count, 1))


# The moves of step 3, by kind: each a batch of starts (theta (B, K, P), pi (B, K), sigma (B, K)).
MOVES = ("split", "outlier", "store", "noise", "tail")


def _moves(stats, coefficients, run):
    """Every move from a converged run, as a batch and each start's kind (split-and-merge EM, Ueda
    et al. 2000, and greedy EM, Vlassis & Likas 2002): drop one segment and
      split    split another in two along the main axis of its stores' coefficients;
      tail     carve a small segment off another's tail (a few stores at a large one's edge);
      noise    with sigma per segment, split another by noise (a quiet group inside a noisy one);
      outlier  open a segment at a store the fit explains badly;
    or, without dropping,
      store    move one ambiguous store to its second segment (EM cannot move a store whose
               posterior is 0 or 1, and two maxima can differ by one store)."""
    drops = range(run.theta.shape[0])
    misfits = _misfits(stats, coefficients, run)
    outliers = [start for drop in drops for start in _new_at_outliers(coefficients, misfits, run, drop, OUTLIERS)]
    return _batch(dict(_pair_moves(stats, coefficients, run, drops), outlier=_stacked(outliers),
                       store=_store_moves(stats, run)))


def _batch(parts):
    """{kind: batch} as one batch (theta, pi, sigma) and each start's kind (an index of MOVES)."""
    kinds = [kind for kind in MOVES if kind in parts]
    starts = tuple(np.concatenate([parts[kind][j] for kind in kinds]) for j in range(3))
    return starts, np.repeat([MOVES.index(kind) for kind in kinds], [len(parts[kind][0]) for kind in kinds])


def _stacked(starts):
    """A list of (theta (K, P), pi (K,), sigma (K,)) starts as one batch."""
    return tuple(np.stack([start[j] for start in starts]) for j in range(3))


def _axis(stats, coefficients, run, split):
    """One standard deviation along the main axis of segment `split`'s stores' coefficients,
    in the likelihood's metric (P,); None where the segment is empty or its stores do not
    identify theta (their summed X_i'X_i is singular)."""
    P = run.theta.shape[1]
    w = run.W[:, split]
    if not w.sum() > 0:
        return None
    information = (w @ stats.XtX).reshape(P, P) / w.sum()       # mean X_i'X_i of the segment
    gap = coefficients - run.theta[split]
    spread = np.einsum("n,np,nq->pq", w, gap, gap) / w.sum()
    try:
        root = np.linalg.cholesky(information)                    # whiten, take the main axis
    except np.linalg.LinAlgError:
        return None
    values, vectors = np.linalg.eigh(root.T @ spread @ root)
    return np.linalg.solve(root.T, vectors[:, -1]) * math.sqrt(max(values[-1], 0.0))


def _pair_moves(stats, coefficients, run, drops):
    """The split, tail and noise moves that remove segment `drop` (None: none, a start with one
    segment more) and replace `split` by two, for every drop in drops and split != drop:
      split  the halves one standard deviation either side of theta_split along its _axis;
      tail   TAIL_SHARE of its weight TAIL_DISTANCE standard deviations out, either side;
      noise  the same theta twice, with sigma x NOISE_FACTORS (sigma per segment only).
    Splits and tails only where the segment has an axis; noise only where it has weight."""
    K, P = run.theta.shape
    axes = [_axis(stats, coefficients, run, c) for c in range(K)]
    pairs = [(drop, split) for drop in drops for split in range(K) if split != drop]
    keep = np.array([[c for c in range(K) if c not in pair] for pair in pairs], dtype=int).reshape(len(pairs), -1)
    split = np.array([pair[1] for pair in pairs], dtype=int)
    has_axis = np.array([axes[c] is not None for c in split], dtype=bool)
    axis = np.array([axes[c] if axes[c] is not None else np.zeros(P) for c in split]).reshape(-1, P)
    centre, half, sd = run.theta[split][:, None], run.pi[split][:, None] / 2, run.sigma[split][:, None]
    theta_keep, sigma_keep = run.theta[keep], run.sigma[keep]
    pi = np.concatenate([run.pi[keep], half, half], axis=1)
    pi /= pi.sum(axis=1, keepdims=True)
    twice = np.concatenate([sigma_keep, sd, sd], axis=1)
    halves = np.concatenate([theta_keep, centre + axis[:, None], centre - axis[:, None]], axis=1)
    weight = pi[:, -2:-1] + pi[:, -1:]
    small = np.concatenate([pi[:, :-2], (1 - TAIL_SHARE) * weight, TAIL_SHARE * weight], axis=1)
    tail_theta = np.stack([np.concatenate([theta_keep, centre, centre + side * TAIL_DISTANCE * axis[:, None]], axis=1)
                           for side in (1, -1)], axis=1)                   # (pairs, 2 sides, K', P)
    noisy = (run.pi[split] > 0) & (stats.model.sigma == "segment")
    low, high = NOISE_FACTORS
    return {"split": (halves[has_axis], pi[has_axis], twice[has_axis]),
            "tail": (tail_theta[has_axis].reshape((-1,) + halves.shape[1:]),
                     np.repeat(small[has_axis], 2, axis=0), np.repeat(twice[has_axis], 2, axis=0)),
            "noise": (np.concatenate([theta_keep, centre, centre], axis=1)[noisy], pi[noisy],
                      np.concatenate([sigma_keep, sd * low, sd * high], axis=1)[noisy])}


def _misfits(stats, coefficients, run):
    """How badly a run explains each store, two ways, for _new_at_outliers: distance (N, K) =
    (b_i - theta_c)' X_i'X_i (b_i - theta_c) / sigma_c^2, how far store i's own b_i lies from
    segment c; and `quiet`, stores ranked by what a new segment at their b_i with the fit's
    smallest sigma would add (greedy EM's criterion, Vlassis & Likas 2002):
    sum_j log(1 - a + a f_j(b_i) / p_j), p_j the fit's density of store j, a the weight that
    maximises it (MISFIT_ITERATIONS EM steps on a alone). It rewards a tight group of stores
    inside a noisy segment, which lies near that segment in distance. Scored for the MISFIT_POOL
    stores that the new segment explains best alone, among those with more weeks than
    coefficients (fewer: b_i fits them exactly)."""
    N = len(coefficients)
    distance = _distances(stats, coefficients, run.theta) / run.sigma ** 2
    log_p = _log_normalise(_log_joint(stats, run.theta, run.pi, run.sigma))[1]
    sigma = run.sigma[run.pi > 0].min()
    own = np.maximum(stats.yty - (coefficients * stats.Xty).sum(axis=1), 0.0)   # R_i at b_i
    alone = stats.const - stats.m * math.log(sigma) - own / (2 * sigma * sigma) - log_p   # log f_i(b_i) / p_i
    alone = np.where(stats.m > stats.P, alone, -np.inf)
    stores = np.argsort(-alone, kind="stable")[:min(MISFIT_POOL, int(np.isfinite(alone).sum()))]
    log_new = _log_joint(stats, coefficients[stores][:, None], np.ones((len(stores), 1)),
                         np.full((len(stores), 1), sigma))[:, 0]
    ratio = np.exp(np.minimum(log_new - log_p, EXP_CAP))                        # f_j(b_i) / p_j
    a = np.full((len(stores), 1), 1.0 / N)
    for _ in range(MISFIT_ITERATIONS):
        a = (a * ratio / (1 - a + a * ratio)).mean(axis=1, keepdims=True)
    gain = np.log1p(a * (ratio - 1)).sum(axis=1)
    return distance, stores[np.argsort(-gain, kind="stable")]


def _new_at_outliers(coefficients, misfits, run, drop, how_many):
    """Starts that remove segment `drop` (None: none) and open a segment at a store the run
    explains badly: the `how_many` farthest from all segments, those farthest from the segments
    that remain, and those where a quiet new segment would gain most (_misfits). A list."""
    distance, quiet = misfits
    K = run.theta.shape[0]
    keep = [c for c in range(K) if c != drop]
    farthest = [np.argsort(-distance[:, columns].min(axis=1), kind="stable")[:how_many]
                for columns in (list(range(K)), keep)] + [quiet[:how_many]]
    dropped = run.sigma[drop] if drop is not None else run.sigma[np.argmax(run.pi)]
    starts = []
    for store in dict.fromkeys(np.concatenate(farthest).tolist()):
        pi = np.append(run.pi[keep], 1.0 / len(coefficients))
        starts.append((np.vstack([run.theta[keep], coefficients[store]]), pi / pi.sum(),
                       np.append(run.sigma[keep], dropped)))
    return starts


def _store_moves(stats, run):
    """Starts that move one of the STORE_MOVES stores whose two best segments are closest in
    log pi_c f_ic to the second: each the M-step after the move. A batch."""
    log_joint = _log_joint(stats, run.theta, np.maximum(run.pi, TINY), run.sigma).T
    order = np.argsort(-log_joint, axis=1, kind="stable")[:, :2]
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(len(best))
    stores = np.argsort(log_joint[rows, best] - log_joint[rows, second], kind="stable")[:STORE_MOVES]
    W = np.repeat(run.W[None], len(stores), axis=0)
    W[np.arange(len(stores)), stores] = 0.0
    W[np.arange(len(stores)), stores, second[stores]] = 1.0
    return _m_step(stats, W)


def _split_and_merge(stats, coefficients, run, search, explored=(), progress=None):
    """Step 3: all _moves from the run compete in a _tournament; the winner replaces the run
    where it gains more than tol; repeat until no move helps. On a flat ridge (_redundant) the
    moves are instead every way of growing the fit without its redundant segment (_growth), each
    run to its end; more than one segment past a maximum, the fit's core is grown again
    (_regrown). explored: converged runs whose moves were tried already; reaching one ends the
    search. progress(None) at each round."""
    K = run.theta.shape[0]
    explored = [done for done in explored if done.converged]
    while K > 1 and not any(_same_point(done, run.W, run.loglik) for done in explored):
        if progress:
            progress(None)
        redundant = _redundant(run)
        known = ([run] if run.converged else []) + explored
        if redundant is None:
            candidate = _tournament(stats, *_moves(stats, coefficients, run), TOURNAMENT, search, known)
        elif _redundant(_without(run, *redundant)) is not None:      # more than one segment past a maximum
            candidate = _regrown(stats, coefficients, run, search)
        else:
            growth = _growth(stats, coefficients, _without(run, *redundant), OUTLIERS_GROW)
            candidate = _tournament(stats, *growth, (), search, known)
        if candidate.loglik <= run.loglik + search.tol:
            break
        run = candidate._replace(n_iter=run.n_iter + candidate.n_iter)
    return run


def _regrown(stats, coefficients, run, search):
    """A run more than one segment past a maximum (two or more redundant segments): its core (the
    run without each of them) grown by one segment as a sweep grows a fit (_grow), then filled up
    to K with empty segments; where that gains, the next round starts from it, one segment less
    deep. A move changes two segments at once, and from two copies the moves can miss a maximum
    that adds one small segment to the core; and there are many of them (K (K - 1) pairs), all
    on a ridge, where early ranks say little."""
    core = run
    while (redundant := _redundant(core)) is not None:
        core = _without(core, *redundant)
    grown = _grow(stats, coefficients, core, search)
    while grown.theta.shape[0] < run.theta.shape[0]:
        grown = _with_empty(stats, grown)
    return grown


def _unsupported(fit):
    """{segment: (the stores' weight it holds, the earlier segment it equals or None)} for the
    segments overfitted names."""
    N = len(fit.W)
    found = {}
    for c in range(len(fit.pi)):
        held = fit.pi[c] * N
        if held < UNSUPPORTED_WEIGHT:
            found[c] = held, None
            continue
        for d in range(c):
            if d not in found and np.all(np.abs(fit.theta[c] - fit.theta[d]) <= EQUAL_SEGMENTS * (1 + np.abs(fit.theta[d]))) \
                    and abs(fit.sigma[c] - fit.sigma[d]) <= EQUAL_SEGMENTS * fit.sigma[d]:
                found[c] = held, d
                break
    return found


def _redundant(run):
    """(c, d) where the fit is on a flat ridge: segment c holds no store (d None) or is a copy of
    segment d. Such a fit is a maximum with a segment fewer, and a few iterations tell nothing of
    where a move leads from it. None where there is no such segment."""
    for c, (held, twin) in _unsupported(run).items():
        if twin is not None or held < EMPTY_WEIGHT:            # a copy, or a segment holding no store
            return c, twin
    return None


def _without(run, c, twin=None):
    """The run without segment c, its weight given to its twin (or spread over the others)."""
    keep = [k for k in range(len(run.pi)) if k != c]
    W, pi = run.W.copy(), run.pi.copy()
    if twin is not None:
        W[:, twin] += W[:, c]
        pi[twin] += pi[c]
    W = W[:, keep] / W[:, keep].sum(axis=1, keepdims=True)
    return run._replace(theta=run.theta[keep], pi=pi[keep] / pi[keep].sum(), sigma=run.sigma[keep], W=W)


def _growth(stats, coefficients, run, outliers):
    """Starts with one segment more than `run`, keeping every segment of it, as a batch and their
    kinds: each segment split in two or a tail carved off it (and split by noise, with sigma per
    segment), or a new segment at each of `outliers` badly explained stores per criterion."""
    pairs = _pair_moves(stats, coefficients, run, [None])
    found = _new_at_outliers(coefficients, _misfits(stats, coefficients, run), run, None, outliers)
    return _batch(dict(pairs, outlier=_stacked(found)))


def _tournament(stats, starts, kinds, stages, search, known=(), supported=False):
    """The best converged run among a batch of starts (_finalists' best)."""
    return max(_finalists(stats, starts, kinds, stages, search, known, supported), key=lambda run: run.loglik)


def _finalists(stats, starts, kinds, stages, search, known=(), supported=False):
    """The ends of the runs of the starts that a tournament among a batch leaves in, found
    cheaply (a finalist that reaches a known maximum, or another's end, stops there). At each stage
    (iterations, per_kind, overall) every start still in gets that many SQUAREM steps, together
    (_squarem_em); the `per_kind` best of each kind and the `overall` best stay in. Ranks are taken
    within each kind because a move that hardly changes the fit (one store) always looks best
    early and would crowd out the moves that change more; a start already back at a known
    maximum, or a copy of another start (_copies), ranks last and takes no place of its kind, at
    every stage. Without stages, every start runs to its end (a ridge: _split_and_merge). The
    last stage's survivors run to convergence; their ends are returned. supported: a survivor
    with a segment of less than UNSUPPORTED_WEIGHT stores' weight is not run on (with covariates
    of membership EM crawls along such a segment's emptying for thousands of steps); where all
    are so, the best is run."""
    theta, pi, sigma = starts
    gain, ranking = np.full(len(theta), math.inf), np.zeros(len(theta))    # no stages: all run
    shares = stats.membership.shares
    for iterations, per_kind, overall in stages:
        theta, pi, sigma, loglik, gain = _squarem_em(stats, (theta, pi, sigma), iterations)
        copies = _copies(np.concatenate([theta, [run.theta for run in known]]) if known else theta,
                         shares(np.concatenate([pi, [run.pi for run in known]]) if known else pi),
                         np.concatenate([sigma, [run.sigma for run in known]]) if known else sigma,
                         np.concatenate([-loglik, np.full(len(known), -np.inf)]),
                         ridges=not stats.membership.names)[:len(theta)]
        ranking = np.where(copies, -np.inf, loglik)
        picked = set(np.argsort(-ranking, kind="stable")[:overall].tolist())
        for kind in sorted(set(kinds.tolist())):     # (np.unique would import numpy.ma: 20 ms a run)
            mine = np.flatnonzero((kinds == kind) & np.isfinite(ranking))
            picked |= set(mine[np.argsort(-ranking[mine], kind="stable")[:per_kind]].tolist())
        kept = sorted(picked)
        theta, pi, sigma, gain, kinds = theta[kept], pi[kept], sigma[kept], gain[kept], kinds[kept]
    ends, found = list(known), []                # a finalist that reaches another's end stops there
    order = np.argsort(-ranking[kept] if stages else ranking, kind="stable")
    if supported:
        held = _e_step(stats, theta, pi, sigma)[0].sum(axis=-2).min(axis=-1)
        order = [j for j in order if held[j] >= UNSUPPORTED_WEIGHT] or order[:1]
    for j in order:
        end = _run_em(stats, (theta[j], pi[j], sigma[j]), search.tol, search.max_iter, known=ends, gain=gain[j])
        if not any(_same_point(other, end.W, end.loglik) for other in ends):    # each maximum once
            ends.append(end)
        found.append(end)
    return found


def _copies(theta, pi, sigma, order, ridges=True):
    """(B,) True for a start that is a copy of a start earlier in `order`: the same segments, in
    any order, to COPY_TOLERANCE (dropping either of two equal segments gives two such starts, and
    many moves fall back to the maximum they came from, put first in `order`); copies would take
    places that distinct moves need. ridges: equal segments (an over-fitted K) share their weight
    in any proportion along a ridge of the same likelihood, so each is compared by the weight of
    all its equals and every point of a ridge is one (not with covariates of membership, where
    equal segments' shares differ from store to store by their gamma)."""
    def equal(a):                                # (..., M, M): which rows of a (..., M, D) agree to COPY_TOLERANCE
        row, other = a[..., :, None, :], a[..., None, :, :]
        return (np.abs(row - other) <= COPY_TOLERANCE * (1 + np.abs(row))).all(axis=-1)
    if ridges:
        pi = (equal(np.concatenate([theta, sigma[..., None]], axis=-1)) @ pi[..., None])[..., 0]   # c's equals' weight
    key = np.concatenate([theta, pi[..., None], sigma[..., None]], axis=-1)          # (B, K, P + 2)
    key = np.take_along_axis(key, np.argsort(key[..., 0], axis=-1)[..., None], axis=1).reshape(len(key), -1)
    close = equal(key)
    copy, kept = np.zeros(len(key), dtype=bool), np.zeros(len(key), dtype=bool)
    for j in np.argsort(order, kind="stable"):               # close[j, k]: j is a copy of k
        copy[j] = (close[j] & kept).any()
        kept[j] = not copy[j]
    return copy


def _grow(stats, coefficients, run, search):
    """Step 4: the best run with one segment more than `run` (_growth), found by GROW_STAGES.
    Never below run: where nothing is better, run with an empty segment (the same likelihood)."""
    starts, kinds = _growth(stats, coefficients, run, OUTLIERS_GROW)
    grown = _tournament(stats, starts, np.zeros(len(kinds), dtype=int), GROW_STAGES, search)
    return grown if grown.loglik >= run.loglik else _with_empty(stats, run)


def _with_empty(stats, run):
    """The run with one empty segment more (pi 0, at the pooled fit; the fit's sigma where the
    segments share one): the same likelihood."""
    sigma = _start_sigma(stats, 1) if stats.model.sigma == "segment" else run.sigma[:1]
    return run._replace(theta=np.vstack([run.theta, _pooled(stats.XtX, stats.Xty)]), pi=np.append(run.pi, 0.0),
                        sigma=np.append(run.sigma, sigma),
                        W=np.column_stack([run.W, np.zeros(len(run.W))]))


# ---------------------------------------------------------------------------------------------
# Standard errors
# ---------------------------------------------------------------------------------------------

def _covariance(stats, run, robust=False):
    """Covariance of (theta flat, the model's sigmas, pi_1..pi_K) from the observed information;
    with robust, store-clustered: right whatever the errors do within a store (autocorrelated
    weeks), as stores are independent. With A = -H = sum_i A_i (A_i = -H_i, store i's own term:
    _store_hessians) and g_i store i's score,
        "CR1":  N/(N-1) A^-1 (sum_i g_i g_i') A^-1               (the plain sandwich, scaled)
        "CR3":  (N-1)/N sum_i d_i d_i',   d_i = (A - A_i)^-1 g_i (True: this one)
    CR3 is the jackknife over stores in its one-step form: psi-hat - d_i is one Newton step from
    psi-hat towards the fit without store i (the likelihood without it has score -g_i and
    information A - A_i at psi-hat), so no store is refitted; its intervals use t with N - 1
    degrees of freedom. Where A - A_i is singular: _leave_one_out_steps.

    The inverse of -H in psi = (theta, log sigma, eta), carried to sigma and pi by the delta
    method: d sigma / d tau = sigma, d pi_c / d eta_d = pi_c (1[c = d] - pi_d), d < K. All NaN
    where -H is not positive definite (not a maximum, or an empty segment) or is flat (a
    curvature below FLAT times the largest: over-fitted, two equal segments): no standard error
    means anything there. With covariates of membership the membership block is gamma against
    the reference segment; a segment that covariates separate (|gamma| > GAMMA_LIMIT) is left
    out of the inverse, its gamma NaN. With a covariate penalty, -H is the penalised information
    (the observed information plus the ridge's Hessian, _score_hessian), finite where the
    covariates separate a segment: the usual covariance of a ridge estimate (the inverse Hessian of
    the penalised log-likelihood, a Bayesian posterior's under the ridge's normal prior); robust,
    the sandwich with that -H and the stores' scores of log L."""
    K, P = run.theta.shape
    KP, nt = K * P, stats.model.mode.count(K)
    membership = stats.membership
    size = KP + nt + membership.reported(K)
    if membership.empty(run.pi):
        return np.full((size, size), np.nan)
    W, _ = _e_step(stats, run.theta, run.pi, run.sigma)
    G, H = _score_hessian(stats, run.theta, run.pi, run.sigma, W, per_store=True)
    keep = np.ones(len(H), dtype=bool)
    keep[KP + nt:] = membership.identified(run.pi)
    H = H[np.ix_(keep, keep)]
    values = np.linalg.eigvalsh(-H)
    if not values.min() > FLAT * values.max():
        return np.full((size, size), np.nan)
    J = np.zeros((size, len(keep)))
    J[:KP, :KP] = np.eye(KP)
    first = np.unique(stats.model.mode.index(K), return_index=True)[1]   # a segment of each sigma
    J[KP:KP + nt, KP:KP + nt] = np.diag(run.sigma[first])
    J[KP + nt:, KP + nt:] = membership.delta(run.pi)
    N = len(G)
    if robust == "CR1":
        scores = G[:, keep] @ np.linalg.solve(-H, J[:, keep].T)
        covariance = N / max(N - 1, 1) * (scores.T @ scores)
    elif robust:                                  # "CR3" (or True)
        scores = _leave_one_out_steps(stats, run, W, G[:, keep], -H, keep) @ J[:, keep].T
        covariance = (N - 1) / N * (scores.T @ scores)
    else:
        covariance = J[:, keep] @ np.linalg.solve(-H, J[:, keep].T)
    if not keep.all():                            # with covariates psi's order is the reported one
        covariance[~keep] = covariance[:, ~keep] = np.nan
    return covariance


def _leave_one_out_steps(stats, run, W, G, A, keep):
    """(N, D): d_i = (A - A_i)^-1 g_i for every store (_covariance's CR3), the A_i computed for
    BATCH_CELLS / D^2 stores at a time, so that memory stays bounded whatever N.

    Where A - A_i is singular (less than FLAT of A's curvature is left in some direction without
    store i: the store alone identifies it, as a segment it holds alone), the jackknife has no
    finite answer in that direction; there store i's term is the plain sandwich's, A^-1 g_i.
    Precisely, in A's whitened coordinates (A = L L', M_i = L^-1 A_i L^-T = U diag(lambda) U'),
        d_i = L^-T U diag(f(lambda)) U' L^-1 g_i,   f = 1 / (1 - lambda) where 1 - lambda > FLAT, else 1,
    which is (A - A_i)^-1 g_i where every 1 - lambda > FLAT (computed then by a plain solve)."""
    N, D = G.shape
    chunk = max(1, BATCH_CELLS // (D * D))
    out = np.empty((N, D))
    for a in range(0, N, chunk):
        part = slice(a, min(a + chunk, N))
        A_i = -_store_hessians(stats, run.theta, run.pi, run.sigma, W, part)
        if not keep.all():
            A_i = A_i[:, keep][:, :, keep]
        left = A - A_i                                        # the information without store i
        try:
            np.linalg.cholesky(left - FLAT * A)               # every 1 - lambda > FLAT
            out[part] = np.linalg.solve(left, G[part, :, None])[..., 0]
        except np.linalg.LinAlgError:
            L = np.linalg.cholesky(A)
            M = np.linalg.solve(L, np.linalg.solve(L, A_i).swapaxes(1, 2))      # L^-1 A_i L^-T (symmetric)
            lam, U = np.linalg.eigh(M)
            f = np.where(1 - lam > FLAT, 1 / np.maximum(1 - lam, FLAT), 1.0)
            x = np.linalg.solve(L, G[part].T).T                                 # L^-1 g_i
            x = (U @ (f * (U.swapaxes(1, 2) @ x[:, :, None])[..., 0])[:, :, None])[..., 0]
            out[part] = np.linalg.solve(L.T, x.T).T
    return out


def _standard_errors(stats, run, robust=False):
    """Params of standard errors: theta (K, P), pi (K,), sigma (K,) (NaN where sigma is fixed);
    robust: store-clustered ones of that kind ("CR3", "CR1": _covariance), their df N - 1."""
    K, P = run.theta.shape
    mode = stats.model.mode
    KP, nt = K * P, mode.count(K)
    se = np.sqrt(np.diag(_covariance(stats, run, robust)))
    se_sigma = se[KP:KP + nt][mode.index(K)] if nt else np.full(K, np.nan)
    out = Params(se[:KP].reshape(K, P), *stats.membership.errors(run.pi, se[KP + nt:], se_sigma))
    if robust:
        out.kind, out.df = CLUSTERED if robust is True else robust, len(stats.n) - 1
    return out


# ---------------------------------------------------------------------------------------------
# Reading a panel: one reader of rows for both layouts
# ---------------------------------------------------------------------------------------------

def _escaped(text):
    """text with control characters (a newline in a file name) written as escapes: one line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], str(text))


def _shown(cell, width=CELL_SHOWN):
    """A cell as a message shows it: escaped, at most `width` characters."""
    cell = _escaped(cell.strip())
    return cell if len(cell) <= width else f"{cell[:width]}... ({len(cell):,} characters)"


def _read_text(path):
    """The file's text, read once (so a pipe or <(zcat file) works): UTF-8 with or without a
    byte-order mark, else Windows-1252. Refused: a folder, a binary file, more than MAX_BYTES."""
    shown = _escaped(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(SNIFF_BYTES)
            if b"\0" not in raw:
                raw += handle.read(MAX_BYTES + 1 - len(raw))
    except FileNotFoundError:
        raise InputError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{shown}: is a folder, not a CSV file") from None
    except OSError as problem:
        raise InputError(f"{shown}: cannot be read ({problem.strerror})") from None
    except MemoryError:
        raise InputError(f"{shown}: too large to read into memory") from None
    if len(raw) > MAX_BYTES:
        raise InputError(f"{shown}: larger than {MAX_BYTES >> 30} GB (or endless): not read")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        text = "\0"
    if re.search("[\x00-\x08\x0b\x0e-\x1f]", text):
        raise InputError(f"{shown}: is not a text file (binary or unreadable content); "
                         "expected a CSV file of prices and sales")
    return text


class _Table(NamedTuple):
    """A CSV text split into cells: the path as messages show it, the separator, the header
    (names stripped), its line, and rows, an iterator of (line number, cells)."""
    path: str
    sep: str
    header: list
    header_line: int
    rows: object


def _table(path, text):
    """The one reader of rows (csv module, strict quoting, "" inside quotes is a quote). The
    header is the first line that is not blank; the separator (',' ';' or tab) is the one that
    splits it into the most cells. Blank rows are skipped. Refused with the line: a quote that
    never closes or closes inside a cell, a header of numbers, a name used twice."""
    csv.field_size_limit(MAX_BYTES)                      # a huge cell is a bad cell, not a crash
    shown = _escaped(path)
    position, line = 0, 1
    while True:
        end = text.find("\n", position)
        first = text[position:] if end < 0 else text[position:end]
        if first.strip(" \t,;\r"):
            break
        if end < 0:
            raise InputError(f"{shown}: the file is empty")
        position, line = end + 1, line + 1

    def split(sep):
        try:
            return next(csv.reader([first.rstrip("\r")], delimiter=sep, skipinitialspace=True, strict=True))
        except csv.Error:
            return []
    sep = max((",", ";", "\t"), key=lambda candidate: len(split(candidate)))
    reader = csv.reader(io.StringIO(text[position:], newline=""), delimiter=sep, skipinitialspace=True,
                        strict=True)
    offset = line - 1

    def rows():
        while True:
            start = offset + reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as problem:
                where = "opens a cell that never closes" if "end of data" in str(problem) else \
                    "closes in the middle of a cell (write a quote inside a quoted cell as \"\")"
                raise InputError(f"{shown}: line {start}: a quote (\") {where}") from None
            if "".join(cells).strip():
                yield offset + reader.line_num, cells

    records = rows()
    header = [name.strip() for name in next(records)[1]]
    while len(header) > 1 and header[-1] == "":          # trailing separators of a spreadsheet
        header.pop()
    if all(_number(name, sep) is not None for name in header):
        raise InputError(f"{shown}: line {line} is numbers, not a header: the first line must name the "
                         "columns (the price, then one name a store; or store, week, sales, price)")
    seen = set()
    twice = next((name for name in header if name and (name in seen or seen.add(name))), None)
    if twice is not None:
        raise InputError(f"{shown}: line {line}: the column name '{_shown(twice)}' appears twice in the "
                         "header: every column needs its own name")
    return _Table(shown, sep, header, line, records)


def _cells(table, line, cells):
    """A row's cells, exactly as many as the header's: empty cells past its end are dropped
    (spreadsheets add them); any other difference is refused."""
    width = len(table.header)
    while len(cells) > width and not cells[-1].strip():
        cells.pop()
    if len(cells) != width:
        hint = (" (a decimal comma or a thousands separator? In a comma-separated file 3,37 is two "
                "cells: write 3.37 and 12345, or separate the cells with ';')"
                if table.sep == "," and len(cells) > width else "")
        raise InputError(f"{table.path}: line {line} has {len(cells)} cells, "
                         f"{'more' if len(cells) > width else 'fewer'} than the header's {width}{hint}")
    return cells


def _number(cell, sep):
    """The one number converter: a cell's value, NaN for a MISSING cell, None where it is not a
    number. With ';' or tab separators a decimal comma is read (2,39 is 2.39)."""
    try:
        return float(cell)
    except ValueError:
        cell = cell.strip()
        if cell in MISSING:
            return math.nan
        if sep != "," and cell.count(",") == 1 and "." not in cell:
            try:
                return float(cell.replace(",", "."))
            except ValueError:
                return None
        return None


def _not_a_number(table, line, j, cell, price=None):
    """The InputError for a cell that is not a number, with a hint where one is likely."""
    shown, hint, cell = _shown(cell), "", cell.strip()
    if price == 0 and j == 0 and re.fullmatch(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", cell):
        hint = ": a date? The first column must be the price"
    elif re.fullmatch(r"-?\d+,\d+", cell) and table.sep == ",":
        hint = ": a decimal comma? In a comma-separated file write 3.37, or separate the cells with ';'"
    elif re.fullmatch(r"-?\d[\d.,]*", cell):
        hint = ": a thousands separator? Write numbers without them (12345.6)"
    elif price == 0 and j == 0:
        hint = (": the first column must be the price (a long file, one row a store and week? Name its "
                "store column with --store COL)")
    raise InputError(f"{table.path}: line {line}, column '{table.header[j] or j + 1}': '{shown}' is not "
                     f"a number{hint}")


def _row_numbers(table, line, cells, columns, price=None):
    """The numbers of a row's cells in `columns` (NaN where MISSING), or the InputError."""
    try:
        return [float(cells[j]) for j in columns]       # the fast way, right for most rows
    except ValueError:
        pass
    values = []
    for j in columns:
        value = _number(cells[j], table.sep)
        if value is None:
            _not_a_number(table, line, j, cells[j], price)
        values.append(value)
    return values


def _check_values(table, name, values, lines, positive, missing=False, what=""):
    """The one set of value checks, on a column (R,) or a block (R, C) of a file: finite, no
    larger than VALUE_LIMIT, positive where a log is taken, present unless missing is allowed.
    name: the column's name, or a list naming each column of the block."""
    values = values.reshape(len(lines), -1)
    bad = (np.abs(values) > VALUE_LIMIT) | (np.isnan(values) & (not missing))
    if positive:
        bad |= values <= 0
    if not bad.any():
        return
    row, column = np.argwhere(bad)[0]
    value = values[row, column]
    column = name[column] if isinstance(name, list) else name
    reason = ("is empty: every row needs sales, a price and its regressors (leave out a week without an "
              "observation)" if np.isnan(value) else
              "is infinite (or a number too large to read)" if np.isinf(value) else
              f"is {value:g}: larger than {VALUE_LIMIT:g}, too large to estimate from" if abs(value) > VALUE_LIMIT else
              f"must be positive to take its log; got {value:g}")
    raise InputError(f"{table.path}: line {lines[row]}, column '{column}': {what}{reason}")


def _layout(header, named):
    """'long' for a long file (a column called store, any case, or columns named by flags)."""
    return "long" if "store" in [name.lower() for name in header] or any(named.values()) else "wide"


def read_panel(path, text=None):
    """Read a wide CSV panel: first column the price, every other column a store, one row a week.
    Returns (price (T,), sales (T, N) with NaN where missing, store names as written)."""
    table = _table(path, _read_text(path) if text is None else text)
    _refuse_long_as_wide(table)
    at = _price_column(table)
    index = next((name for j, name in enumerate(table.header) if j != at and name.strip().lower() in INDEX_NAMES), None)
    if index is not None:
        raise InputError(f"{table.path}: column '{_shown(index)}' is named like a week, date or index, not a store: "
                         f"a wide file has the price ('{_shown(table.header[at])}') and one column a store")
    rows, lines = [], []
    columns = range(len(table.header))
    for line, cells in table.rows:
        rows.append(_row_numbers(table, line, _cells(table, line, cells), columns, at))
        lines.append(line)
    return _checked_panel(table, np.array(rows, dtype=float).reshape(len(rows), len(table.header)), lines)


def _refuse_long_as_wide(table):
    """A long file is never read as a wide one: refused where the first column is named like a
    store identifier, or the header names a sales and a price column."""
    lower = [name.lower() for name in table.header]
    first = lower[0]
    if first in STORE_NAMES or first.endswith(("_id", " id")) or {"sales", "price"} <= set(lower[1:]):
        raise InputError(f"{table.path}: this looks like a long file (one row a store and week: its header "
                         f"is {', '.join(table.header[:6])}), not a wide one (first column the price): name its "
                         f"columns, e.g. --store {table.header[0] or 'COL'} (and --week, --sales, --price "
                         "where they are not called so)")


def _checked_panel(table, values, lines):
    T = len(values)
    if T == 0:
        raise InputError(f"{table.path}: has a header but no data rows")
    if values.shape[1] < 2:
        raise InputError(f"{table.path}: has only one column (the price): no store columns")
    names = [name or f"column {j + 1}" for j, name in enumerate(table.header)]
    at = _price_column(table)
    price, sales = values[:, at], np.delete(values, at, axis=1)
    if at == 0:
        _check_first_column(table, price, names[0], lines)
    names = [names[at]] + names[:at] + names[at + 1:]
    _check_values(table, names[0], price, lines, positive=True, what="the price ")
    if T < 2:
        raise InputError(f"{table.path}: has {T} week; at least 2 weeks are needed for the 2 coefficients "
                         "(alpha, beta) of a segment")
    if np.ptp(price) == 0:
        raise InputError(f"{table.path}: the price ('{names[0]}') is {price[0]:g} in every week; "
                         "a price that never changes cannot identify a price effect")
    _check_values(table, names[1:], sales, lines, positive=True, missing=True, what="sales ")
    empty = np.isnan(sales).all(axis=0)
    if empty.any():
        raise InputError(f"{table.path}: column '{names[1 + int(np.argmax(empty))]}' has no observed week "
                         "(every cell is empty)")
    return price, sales, names[1:]


def _price_column(table):
    """The wide file's price column: the one whose header names a price (Price, price_usd, Unit
    price, ...), wherever it stands, else the first. Two such columns are refused by name."""
    named = [j for j, name in enumerate(table.header) if re.search(r"(^|[^a-z])prices?([^a-z]|$)", name.lower())
             or re.fullmatch(PRICE_NAMES, re.sub(r"[^a-z]", "", name.lower()))]
    if len(named) > 1:
        raise InputError(f"{table.path}: line {table.header_line}: columns " + " and ".join(
            f"'{_shown(table.header[j])}'" for j in named[:2]) + " are both named like a price: a wide file has one "
                         "price column, then one column a store")
    return named[0] if named else 0


def _check_first_column(table, price, name, lines):
    """InputError where the first column is not a price: named like a week, date or index,
    holding the integers 1..T or 0..T-1 in order (week numbers, or a pandas index), or whole
    numbers that repeat in blocks (a long file's store ids)."""
    T = len(price)
    if np.isnan(price).any():
        raise InputError(f"{table.path}: line {lines[int(np.argmax(np.isnan(price)))]}, column '{name}': "
                         "the price is missing")
    counting = T > 2 and (np.array_equal(price, np.arange(1, T + 1)) or np.array_equal(price, np.arange(T)))
    if name.strip().lower() in INDEX_NAMES or counting:
        looks = (f"holds the numbers {int(price[0])} to {int(price[-1])} in order (week numbers or an index)"
                 if counting else "is named like a week, date or index")
        raise InputError(f"{table.path}: the first column must be the price; '{name}' {looks}. Put the price "
                         "first, then one column a store; or give a long file (one row a store and week "
                         "with columns store, week, sales, price)")
    if np.all(np.isfinite(price)) and np.all(price == np.round(price)):
        starts = np.flatnonzero(np.diff(price, prepend=np.nan) != 0)        # first row of each run
        runs = np.diff(np.append(starts, T))
        if len(starts) > 1 and len(set(price.tolist())) == len(starts) and runs.min() >= 2:
            raise InputError(f"{table.path}: the first column '{name}' holds whole numbers that repeat in "
                             "blocks (store ids?), not a price a week: a long file (one row a store and week)? "
                             f"Name its columns, e.g. --store {name}")


def panel_arrays(price, sales):
    """The model's y = log sales (T, N) and X = [1, log price] (T, 2)."""
    return np.log(sales), np.column_stack([np.ones_like(price), np.log(price)])


def _names(x, what, source=None):
    """A list of column names: one name given as a string is one name, never its letters. source:
    the file they are columns of, for the message."""
    names = [x] if isinstance(x, str) else list(x or ())
    if not all(isinstance(name, str) and name.strip() for name in names):
        where = f"{_escaped(source)}: " if isinstance(source, str) else ""
        raise InputError(f"{where}{what} must be column names; got {names!r}")
    return names


# ---------------------------------------------------------------------------------------------
# A sweep over K, results.json and the report
# ---------------------------------------------------------------------------------------------

def sweep(stats, Ks, search=Search(), names=None, progress=None):
    """{K: Fit} for each K of Ks (in that order), fitted in increasing K, each K's search grown
    from the last one's fit where it would end below it (nested maxima: the log-likelihood never
    falls as K grows). progress(Progress) hears of each K's start and of the search's work."""
    fits = {}
    for K in sorted(Ks):
        if progress:
            progress(Progress("starts", K, 0, search.n_init if K > 1 else 1))
        with warnings.catch_warnings():           # an empty segment is said in the results, plainly
            warnings.simplefilter("ignore", RuntimeWarning)
            fits[K] = _search(stats, K, search, names, previous=fits[max(fits)] if fits else None, progress=progress)
    return {K: fits[K] for K in Ks}


def _check_Ks(Ks, N, where):
    """Every K of a sweep from 1 to N/2 (_check_K), before any work; where names the panel."""
    for K in Ks:
        _check_K(K, N, where=where)


def results(fits, stores, weeks, name, search=Search(), layout="wide", summary=None):
    """The assignment's results.json, as a dict, of a sweep's {K: Fit}: the data, the settings, for
    each K its estimates, standard errors, log-likelihood, criteria and the search's work, BIC's
    choice, the notes, the stores that carry no information and each store's segment and
    posteriors at BIC's K (store_segments, last). summary(fit): a model's entry, where not the
    course's (_model_summary); the analyst's package gives its own, and adds its keys before
    store_segments (README, "results.json")."""
    models = [(summary or _model_summary)(fit) for fit in fits.values()]
    best = min(models, key=lambda model: model["bic"])["K"]
    fit = fits[best]
    model = fit.model
    out = {"data": name, "stores": len(stores), "weeks": weeks, "observations": fit.n_obs,
           "settings": {"n_init": search.n_init, "seed": search.seed, "tol": search.tol,
                        "sigma": model.fixed if model.sigma == "fixed" else model.sigma,
                        "store_effects": model.store_effects, "regressors": fit.names, "format": layout},
           "models": models, "best_K": best, "notes": [], "uninformative": _uninformative(fit._stats, stores)}
    out["notes"] = _notes(out)
    out["store_segments"] = _store_segments(stores, fit)
    return out


def _model_summary(fit):
    """The course's results.json entry of one Fit: estimates, standard errors, criteria, the
    search's work and the segments the data do not support (n/a standard errors there).
    n_params = K P + K - 1 + the sigmas estimated (store effects are not counted: the within
    likelihood is free of them); AIC = 2 k - 2 log L; BIC = k log(observed cells) - 2 log L;
    ICL = BIC + 2 EN, EN = -sum_ic w_ic log w_ic; entropy = 1 - EN / (N log K). Standard errors
    that cannot be computed are left empty and said (failed), never the fit."""
    failed = {}
    se = _shown_errors(fit, _diagnostic(failed, "standard errors", lambda: fit.se, None))
    unsupported = overfitted(fit)
    counts = np.bincount(fit.W.argmax(axis=1), minlength=fit.K)
    summary = {"K": fit.K, "coefficients": fit.names, "theta": fit.theta.tolist(), "pi": fit.pi.tolist(),
               "sigma": fit.sigma.tolist(),
               "se": {"theta": se.theta.tolist(), "pi": se.pi.tolist(), "sigma": se.sigma.tolist()},
               "loglik": fit.loglik, "n_params": fit.n_params, "aic": fit.aic, "bic": fit.bic, "icl": fit.icl,
               "entropy": fit.entropy, "iterations": fit.n_iter, "converged": fit.converged,
               "stores_in_segment": counts.tolist(),
               "unsupported": {str(c + 1): why for c, why in sorted(unsupported.items())},
               "supported_K": fit.K - len(unsupported), "search": fit.search,
               "few_stores": {str(c + 1): {"stores": count, "weight": held} for c, (count, held) in _few_stores(fit).items()}}
    if failed:
        summary["failed"] = failed
    return summary


def _shown_errors(fit, se):
    """A copy of a Params of standard errors (None: not computed) with NaN for the segments the data
    do not support (overfitted), where no standard error means anything."""
    K, P = fit.theta.shape
    se = se or Params(np.full((K, P), np.nan), np.full(K, np.nan), np.full(K, np.nan))
    theta, pi, sigma = se.theta.copy(), se.pi.copy(), se.sigma.copy()
    for c in overfitted(fit):
        theta[c], pi[c], sigma[c] = np.nan, np.nan, np.nan
    return Params(theta, pi, sigma)


def _diagnostic(failed, what, compute, otherwise):
    """compute(), or where it fails, otherwise, with the failure recorded in failed[what]: a
    diagnostic never stops a fit that succeeded from being delivered. An interruption is not a
    failure."""
    try:
        return compute()
    except Exception as problem:                 # noqa: BLE001 - any failure of a diagnostic, said in the notes
        failed[what] = f"{type(problem).__name__}: {problem}"
        return otherwise


def _few_stores(fit):
    """{segment: (the stores most likely in it, the stores' posterior weight it holds)} for a
    segment, not unsupported (overfitted says those), that is most likely for one or two stores or
    holds less than CREDIBLE_STORES stores' weight: it describes those stores rather than a
    segment of the market."""
    held, count = fit.W.sum(axis=0), np.bincount(fit.W.argmax(axis=1), minlength=fit.K)
    unsupported = _unsupported(fit)
    twinned = set(unsupported) | {twin for _, twin in unsupported.values()}     # a copy's stores go either way
    return {c: (int(count[c]), float(held[c])) for c in range(fit.K)
            if fit.K > 1 and c not in twinned and (held[c] < CREDIBLE_STORES or 1 <= count[c] <= 2)}


def _uninformative(stats, stores):
    """The stores that carry no information on the price effect under the model, each with why:
    one week under store effects (its posterior is its prior), or a price that never changes
    under store effects. They stay in the fit, placed by what their other weeks say."""
    price = stats.XtX.reshape(len(stats.n), stats.P, stats.P)[:, stats.price, stats.price]
    return [{"store": stores[i], "why": "a single week" if stats.m[i] == 0 else "its price never changes"
             if stats.model.store_effects else "its log price is 0 in every week"}
            for i in np.flatnonzero((stats.m == 0) | ~(price > 0))]


def _notes(results):
    """What the reader must know beyond the tables, one sentence each (the course's; the analyst's
    package has more)."""
    notes = [note for note in (_uninformative_note(results), _largest_K_note(results)) if note]
    for model in results["models"]:
        notes += _unsupported_notes(model) + _failed_notes(model)
    return notes


def _uninformative_note(results):
    apart = results.get("uninformative")
    if not apart:
        return None
    return (f"{len(apart)} store{'s carry' if len(apart) > 1 else ' carries'} no information on the price effect under "
            f"this model and stay{'s' * (len(apart) == 1)} in the fit, placed by what their other weeks say: "
            + ", ".join(f"'{store['store']}' ({store['why']})" for store in apart[:STORES_NAMED])
            + (f" and {len(apart) - STORES_NAMED} more" if len(apart) > STORES_NAMED else ""))


def _largest_K_note(results):
    best, Ks = results["best_K"], [model["K"] for model in results["models"]]
    if not (len(Ks) > 1 and best == max(Ks)):
        return None
    captured = "; ".join(f"K = {model['K']} segments capture {100 * model['captured']:.0f}%"
                         for model in results["models"] if model.get("captured") is not None and model["K"] > 1)
    return (f"BIC picks K = {best}, the largest K tried: the criteria keep improving, as they do when "
            "stores' price sensitivities spread continuously rather than fall into a few groups"
            + (f" (of the likelihood gain from one segment to each store's own regression, {captured})"
               if captured else "")
            + f"; a wider --K (e.g. --K {' '.join(map(str, range(1, best + 4)))}) may go on improving: "
            "weigh what one more segment captures, and see --min-share")


def _unsupported_notes(model):
    if not model["unsupported"]:
        return []
    problems = "; ".join(f"segment {c} {why}" for c, why in model["unsupported"].items())
    supported = model["supported_K"]
    return [f"K = {model['K']}: {problems}; the data support at most {supported} segment{'s' * (supported != 1)}"]


def _failed_notes(model):
    return [f"K = {model['K']}: the {what} could not be computed ({why}); the fit itself is delivered: please "
            "report it with the command" for what, why in model.get("failed", {}).items()]


def overfitted(fit):
    """{segment: why} for the segments of a fit that the data do not support: one with (almost) no
    store (less than UNSUPPORTED_WEIGHT of a store's posterior weight), or one equal to an earlier
    segment (theta and sigma within EQUAL_SEGMENTS, relative)."""
    return {c: ("holds no store" if held < EMPTY_WEIGHT else f"holds almost no store ({held:.2f} of one store's weight)")
            if twin is None else f"is the same as segment {twin + 1}" for c, (held, twin) in _unsupported(fit).items()}


def _store_segments(stores, fit):
    """Each store's segment and posteriors; with covariates of membership its prior too."""
    segment, W = (fit.W.argmax(axis=1) + 1).tolist(), fit.W.tolist()
    if fit.gamma is None:
        return [{"store": store, "segment": c, "posterior": w} for store, c, w in zip(stores, segment, W)]
    return [{"store": store, "segment": c, "posterior": w, "prior": p}
            for store, c, w, p in zip(stores, segment, W, fit.prior.tolist())]


LOGLIK_KEYS = ("loglik", "aic", "bic", "icl", "aic3", "caic", "sabic", "maxima")


def _tidy(value, digits=JSON_DIGITS):
    """Floats to `digits` significant digits (JSON_DIGITS_LOGLIK under LOGLIK_KEYS): rounding
    noise, which differs between machines, left out; NaN to null."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: _tidy(item, JSON_DIGITS_LOGLIK if key in LOGLIK_KEYS else digits) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tidy(item, digits) for item in value]
    return value


def results_json(results, rows=None):
    """results as JSON text: one line a store, number lists kept on one line. The iteration
    counts stay out (they are in the report): a stopping test at the edge of tol can take one
    iteration more or less under another BLAS kernel, and the file must not change with it.
    rows(stores): the stores' lines, where not json.dumps of each tidied store (the package's
    are the same bytes, faster for a million stores)."""
    if "groups" in results:
        inner = ",\n".join(f"{json.dumps(str(group))}: " + results_json(each, rows).rstrip()
                           for group, each in results["groups"].items())
        return (f'{{"data": {json.dumps(results["data"])}, "by": {json.dumps(results["by"])}, "groups": {{\n'
                + inner + "\n}}\n")
    if "models" not in results:                  # a group of --by that could not be fitted: its error
        return json.dumps(results, indent=2) + "\n"
    stores = results.get("store_segments", [])
    results = _tidy({key: value for key, value in results.items() if key != "store_segments"})
    results["models"] = [{key: value for key, value in model.items() if key != "iterations"}
                         for model in results["models"]]
    text = json.dumps(results, indent=2)
    text = re.sub(r"\[\s*([-+0-9.eE,\s]*|null|true|false)\s*\]",
                  lambda match: "[" + " ".join(match.group(1).split()) + "]", text)
    text = re.sub(r"\[\s*(\[[^\[\]]*\](?:,\s*\[[^\[\]]*\])*)\s*\]",
                  lambda match: "[" + " ".join(match.group(1).split()) + "]", text)
    lines = ",\n    ".join(rows(stores) if rows else [json.dumps(_tidy(store)) for store in stores])
    return text[:-2] + ',\n  "store_segments": [\n    ' + lines + "\n  ]\n}\n"


def segments_csv(stores, W, fit=None):
    """The segment list for a spreadsheet: store, segment (1..K), the posterior of each segment;
    with a Fit that has covariates of membership, each store's prior and covariates too."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    K = W.shape[1]
    extra = fit is not None and fit.gamma is not None
    names = list(fit.model.covariates) if extra else []
    raw = fit._stats.membership.covariates() if extra else None
    writer.writerow(["store", "segment"] + [f"posterior_{c + 1}" for c in range(K)]
                    + ([f"prior_{c + 1}" for c in range(K)] + names if extra else []))
    for i, store in enumerate(stores):
        writer.writerow([store, int(W[i].argmax()) + 1] + [f"{w:.6g}" for w in W[i]]
                        + ([f"{p:.6g}" for p in fit.prior[i]] + [f"{v:.6g}" for v in raw[i]] if extra else []))
    return out.getvalue()


def _number_cell(value, width, digits=4):
    """A number for the report's tables; n/a for a missing (None or NaN) standard error."""
    return f"{value:{width}.{digits}f}" if value is not None and math.isfinite(value) else f"{'n/a':>{width}}"


def _describe(model):
    """One line on a Model, or on the settings of results.json."""
    if isinstance(model, dict):
        sigma = model.get("sigma", 1.0)
        model = Model(*((sigma, 1.0) if isinstance(sigma, str) else ("fixed", sigma)),
                      bool(model.get("store_effects")))
    noise = SIGMA[model.sigma].words.format(fixed=model.fixed)
    return noise + ("; store fixed effects (within-store likelihood)" if model.store_effects else "")


def _fit_lines(model, sigma_estimated, more=()):
    """The report's lines of one fitted model (a _model_summary): its criteria, the search's work,
    the table of segments, then `more` lines (the analyst's package's: robust standard errors,
    who is in each segment) and the flags."""
    after = f" after {model['iterations']} iterations" if "iterations" in model else ""
    status = f"converged{after}" if model["converged"] else f"NOT converged{after}"
    lines = [f"K = {model['K']}   log-likelihood {model['loglik']:.4f}   free parameters {model['n_params']}   {status}",
             f"        AIC {model['aic']:.2f}   BIC {model['bic']:.2f}   ICL {model['icl']:.2f}   "
             f"entropy {model['entropy']:.3f}"] + _search_lines(model.get("search"))
    names = model["coefficients"]
    columns = [(name, [row[j] for row in model["theta"]], [row[j] for row in model["se"]["theta"]])
               for j, name in enumerate(names)]
    if sigma_estimated:
        columns.append(("sigma", model["sigma"], model["se"]["sigma"]))
    columns.append(("pi", model["pi"], model["se"]["pi"]))
    widths = [max(10, len(name)) for name, _, _ in columns]
    lines.append("  segment" + "".join(f" {name:>{width}}    (s.e.)" for (name, _, _), width in zip(columns, widths))
                 + "   stores")
    few = model.get("few_stores", {})
    for c in range(model["K"]):
        cells = "".join(f" {_number_cell(values[c], width)} ({_number_cell(errors[c], 7)})"
                        for (_, values, errors), width in zip(columns, widths))
        lines.append(f"  {c + 1:7d}{cells} {model['stores_in_segment'][c]:8d}" + (" !" if str(c + 1) in few else ""))
    lines += more
    if few:
        lines.append("  ! " + ", ".join(f"segment {c} is most likely for {held['stores']} store{'s' * (held['stores'] != 1)} "
                                       f"({held['weight']:.1f} stores' weight)" for c, held in few.items())
                     + ": a segment of one or two stores describes those stores, not a segment of the market")
    if model.get("unsupported"):
        lines.append("  ! " + "; ".join(f"segment {c} {why}" for c, why in model["unsupported"].items())
                     + f": the data support at most {model['supported_K']} segment{'s' * (model['supported_K'] != 1)} (n/a: no standard "
                     "error means anything there)")
    return lines


def _search_lines(search):
    """One line on the search's work, so that "the global maximum" can be audited."""
    if not search or search["starts"] < 2:
        return []
    starts, maxima = search["starts"], search["maxima"]
    if search["at_best"]:
        lower = len(maxima) - 1
        return [f"        search: {search['at_best']} of {starts} starts ended at this maximum"
                + (f", the others at {lower} lower maxim{'um' if lower == 1 else 'a'}" if lower else "")]
    return [f"        search: no start ended here: split-and-merge moves climbed above the best start's "
            f"{maxima[0][0]:.4f} ({len(maxima)} maxima among {starts} starts)"]


def _guide(settings, names):
    """A few lines for a reader who is not a statistician: what each column of the tables means."""
    others = [name for name in names if name not in ("intercept", "log price")]
    slopes = [name for name in names if name != "intercept"]
    lines = ["How to read it: every store belongs to one segment, and the stores of a segment share one "
             f"regression of weekly log sales on {', '.join(slopes)}.",
             "  log price: the price elasticity. +1% price -> that many % change in sales "
             "(-2.0: 2% fewer units sold). Segments run from the most price-sensitive to the least."]
    if "intercept" in names:
        lines.append("  intercept: log sales at a price of 1 (the segment's level of sales).")
    if settings.get("store_effects"):
        lines.append("  store effects: each store has its own level of sales; segments differ only in "
                     "how they respond to price" + (" and the other regressors." if others else "."))
    for name in others:
        lines.append(f"  {name}: the change in log sales for one unit more of {name} "
                     f"(0.5: about {100 * (math.exp(0.5) - 1):.0f}% more sales).")
    sigma = settings.get("sigma", 1.0)
    lines.append("  sigma: the spread of a store's weekly log sales around its segment's line "
                 + ("(estimated)." if isinstance(sigma, str) else f"(fixed at {sigma:g}, not estimated)."))
    lines.append("  pi: the segment's share of stores; stores: how many stores are most likely in it. "
                 "(s.e.): standard error.")
    lines.append("  AIC, BIC, ICL: lower is better (ICL also penalises uncertain memberships); "
                 "entropy 1: every store's segment is certain.")
    return lines


def _strength(gap):
    """How strongly a BIC gap favours the lower BIC (Kass & Raftery 1995)."""
    return next(words for bound, words in BIC_STRENGTH if gap > bound or bound == 0)


def report(results):
    """The printed report: what the columns mean, a table of segments for each K, then BIC's
    choice and how sure it is. Takes results()' dictionary, or the same read back from
    results.json."""
    lines = _header_lines(results)
    for model in results["models"]:
        lines += _fit_lines(model, isinstance(results["settings"].get("sigma", 1.0), str)) + [""]
    return "\n".join(lines + _choice_lines(results))


def _header_lines(results):
    """The report's first lines: the data, the model, and how to read the tables."""
    settings = results["settings"]
    names = results["models"][0].get("coefficients", ["intercept", "log price"])
    apart = len(results.get("uninformative", []))
    stores = f"{results['stores']} stores" + (f" ({apart} of them with no information on the price effect: see the "
                                              "notes)" if apart else "")
    return [f"{results['data']}: {stores} x {results['weeks']} weeks, "
            f"{results['observations']} observed cells; best of {settings['n_init']} "
            f"starts for each K (seed {settings['seed']})",
            f"model: log sales on {', '.join(settings.get('regressors', names))}; {_describe(settings)}", ""] \
        + _guide(settings, names) + [""]


def _choice_lines(results):
    """BIC's choice and how strongly the next best K's BIC gap favours it (Kass & Raftery); with
    one K fitted, that nothing was chosen."""
    ranked = sorted(results["models"], key=lambda model: model["bic"])
    if len(ranked) == 1:
        return [f"One K fitted (K = {ranked[0]['K']}, BIC {ranked[0]['bic']:.2f}): BIC compares models, so "
                "nothing was chosen; give several K (--K 1 2 3 4) to choose among them."]
    others = ", ".join(f"K = {model['K']}: +{model['bic'] - ranked[0]['bic']:.2f}" for model in ranked[1:])
    gap = ranked[1]["bic"] - ranked[0]["bic"]
    return [f"BIC chooses K = {results['best_K']}: the lowest BIC, {ranked[0]['bic']:.2f} ({others}).",
            f"The next best, K = {ranked[1]['K']}, is {gap:.2f} higher: {_strength(gap)} evidence "
            f"for K = {results['best_K']} (a BIC gap above 10 is very strong, 6-10 strong, 2-6 positive, below 2 weak)."]


# ---------------------------------------------------------------------------------------------
# The command line: the course's here; where the analyst's package is importable, its own
# ---------------------------------------------------------------------------------------------

class _Refused(Exception):
    """A command line that cannot be run: its one-line message."""


def _api_check(check):
    """An argparse type from one of the API's checks: the same rule and message."""

    def convert(text):
        try:
            return check(text)
        except ValueError as problem:
            raise argparse.ArgumentTypeError(str(problem)) from None
    return convert


def _parser(more=None):
    """The command line's parser: the course's options, and where `more` is the analyst's package's
    command line, its options in their places (more.outputs(parser) after --segments-K,
    more.options(parser, model) after --store-effects)."""

    class Parser(argparse.ArgumentParser):
        def error(self, message):                # one line, exit code 2
            raise _Refused(f"{message} (see --help)")

    def sigma(text):
        return text if text in ("common", "segment") else _model(_float(text)).fixed

    def tol(text):
        _check_run(_float(text), 1)
        return _float(text)

    parser = Parser(description="Estimate store segments from weekly sales (a mixture of regressions "
                    "of log sales on log price, by EM) for several K; print a report and write JSON.",
                    allow_abbrev=False)
    parser.add_argument("csv", nargs="?", default=None,
                        help=more.CSV_HELP if more else "CSV file, wide: first column the price, then one column "
                             "per store (default: data/example.csv, made by simulate.py)")
    parser.add_argument("--K", nargs="+", default=["2", "3", "4"], metavar="K",
                        help="numbers of segments (default 2 3 4)")
    parser.add_argument("--n-init", type=_whole_option("--n-init", 1, MAX_STARTS), default=N_INIT,
                        help=f"EM starts for each K (default {N_INIT})")
    parser.add_argument("--seed", type=_whole_option("--seed", 0), default=0, help="random seed of the starts (default 0)")
    parser.add_argument("--tol", type=_api_check(tol),
                        default=TOL, help=f"convergence tolerance (default {TOL:g})")
    parser.add_argument("--output", default="results.json", help="JSON file to write (default results.json)")
    parser.add_argument("--segments", metavar="FILE.csv", help="write each store's segment and posteriors")
    parser.add_argument("--segments-K", type=_whole_option("--segments-K", 1), metavar="K",
                        help="the K of --segments and --plot (default: BIC's choice)")
    if more:
        more.outputs(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    parser.add_argument("--version", action="version", version=f"em_sales {__version__}")
    model = parser.add_argument_group("the model")
    model.add_argument("--sigma", type=_api_check(sigma), default=1.0, metavar="VALUE|common|segment",
                       help="noise sd: fixed at VALUE (default 1, the course's model), one estimated for all "
                            "segments (common) or one per segment (segment)")
    model.add_argument("--store-effects", action="store_true",
                       help="each store its own intercept (store fixed effects); segments differ in the slopes")
    if more:
        more.options(parser, model)
    return parser


def _whole_option(name, low, high=None):
    """An argparse type for a whole-number option, by the API's check."""
    return _api_check(lambda text: _whole(_integer(text), name, low, high))


def _integer(text):
    if not text.strip().lstrip("+-").isdigit():
        raise InputError(f"expected a whole number; got {text!r}")
    return int(text)


def _float(text):
    value = _number(text, ",")
    if value is None or math.isnan(value):
        raise InputError(f"expected a number; got {text!r}")
    return value


def _arguments(parser, argv):
    """Parsed arguments with K checked and the file named (args.path; data/example.csv by default),
    or _Refused. --K 2 3 data.csv takes data.csv as the file."""
    args = parser.parse_args(argv)
    Ks = list(args.K)
    if args.csv is None and len(Ks) > 1 and _number(Ks[-1], ",") is None:
        args.csv = Ks.pop()                      # --K swallowed the file name
    for K in Ks:
        if _number(K, ",") is None or not K.strip().lstrip("+-").isdigit():
            raise _Refused(f"argument --K: expected whole numbers of segments; got {K!r} (see --help)")
    try:
        args.K = list(dict.fromkeys(_whole(int(K), "--K", 1) for K in Ks))
    except InputError as problem:
        raise _Refused(str(problem)) from None
    if args.segments_K is not None and args.segments_K not in args.K:
        raise _Refused(f"--segments-K {args.segments_K} is not among the K estimated (--K {' '.join(map(str, args.K))})")
    here = os.path.dirname(os.path.abspath(__file__))
    args.path = args.csv or "data/example.csv"
    if args.csv is None and not os.path.exists(args.path):      # run from another folder
        args.path = os.path.join(here, "data", "example.csv")
    return args


def _check_outputs(inputs, outputs):
    """Before any work: every output (flag, path) has a name, none is an input or another output,
    and each can be written."""
    seen = {os.path.realpath(path): f"the input file {path}" for path in inputs}
    for flag, target in outputs:
        if not target.strip():
            raise _Refused(f"{flag} needs a file name; got an empty one")
        real = os.path.realpath(target)
        if real in seen:
            raise _Refused(f"{flag} {target} is {seen[real]}: refusing to overwrite it")
        seen[real] = f"also {flag}'s file"
        folder = os.path.dirname(real)
        if os.path.isdir(real):
            raise _Refused(f"{flag} {target} is a folder")
        if not os.path.isdir(folder):
            raise _Refused(f"{flag} {target}: the folder {os.path.dirname(target) or '.'} does not exist")
        if not os.access(folder, os.W_OK) or (os.path.exists(real) and not os.access(real, os.W_OK)):
            raise _Refused(f"{flag} {target}: cannot be written (permission denied)")


class _Outputs:
    """The run's files, replaced all together or not at all: each is written to a temporary file
    beside its target first (stage); commit() moves them all into place with Ctrl-C and SIGTERM
    held back until the last is done; any temporary file left is removed (close), whatever
    happens short of SIGKILL."""

    def __init__(self):
        self.staged = []

    def stage(self, target, content):
        folder = os.path.dirname(os.path.abspath(target))
        temporary = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.tmp")
        self.staged.append((temporary, target))
        try:
            with open(temporary, "wb") as out:
                out.write(content.encode() if isinstance(content, str) else content)
        except OSError as problem:
            raise _Refused(f"cannot write {target}: {problem.strerror}") from None

    def commit(self):
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) \
            if hasattr(signal, "pthread_sigmask") else None
        try:
            for temporary, target in self.staged:
                os.replace(temporary, target)
        except OSError as problem:
            raise _Refused(f"cannot write {target}: {problem.strerror}") from None
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def close(self):
        for temporary, _ in self.staged:
            if os.path.exists(temporary):
                os.remove(temporary)


def _quiet_stdout():
    """Point standard output at the null device, so that Python's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


class _Terminated(BaseException):
    """SIGTERM (what timeout, systemd and Kubernetes send), raised in the main thread so that the run
    ends as an interrupted one does: temporary files removed, the old outputs left."""


class _Step:
    """What the command line is doing: named in the message if the program fails there."""

    def __init__(self):
        self.now = "reading the arguments"


def main(argv=None):
    """The command line (python em_sales.py --help): where the analyst's package em_sales_tools is
    importable, its command line, with every option; else the course's, which reads a wide file
    and refuses the package's options in one line. Returns the exit code: 0; 2 for input or
    arguments that cannot be used (one line on stderr, no file touched); 3 a failure of the
    program itself (one line, no file touched: please report it); 130 interrupted (Ctrl-C); 141
    standard output closed early (| head); 143 terminated (SIGTERM). Never a traceback."""
    return _command(_dispatch, argv)


def _dispatch(argv, step):
    """The package's command line where it is importable, else the course's (_main)."""
    step.now = "importing the analyst's package em_sales_tools"
    tools = _tools()
    return tools._main(argv, step) if tools else _main(argv, step)


def _tools():
    """The analyst's package's command line (em_sales_tools.cli), or None where the package is not
    importable beside this file (copied alone)."""
    try:
        from em_sales_tools import cli
    except ModuleNotFoundError as problem:
        if problem.name not in ("em_sales_tools", "em_sales_tools.cli"):
            raise
        return None
    return cli


def _command(run, argv):
    """run(argv, step) as a command: its exit code, or the exit codes of main() for what ends it."""
    step = _Step()

    def terminate(number, frame):
        raise _Terminated
    try:
        before = signal.signal(signal.SIGTERM, terminate)
    except ValueError:                           # not the main thread: SIGTERM keeps its default
        before = None
    try:
        return run(argv, step)
    except (_Refused, InputError) as problem:
        print(f"error: {_escaped(problem)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 2
    except Exception as problem:                 # a failure of the program, never of the input
        print(f"error: internal error while {step.now} ({type(problem).__name__}: {_escaped(problem)}): please "
              "report it with the command", file=sys.stderr)
        return 3
    finally:
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def _main(argv, step):
    """The course's command line, this file alone: a wide file, the course's options."""
    needed = next((flag for flag in argv or sys.argv[1:] if flag.split("=")[0] in TOOLS_OPTIONS), None)
    if needed:
        raise _Refused(f"{needed} needs the analyst's package em_sales_tools beside em_sales.py (the repository's "
                       "em_sales_tools/ folder, or pip install the repository); this file alone reads a wide file")
    args = _arguments(_parser(), argv)
    outputs = [(flag, path) for flag, path in (("--output", args.output), ("--segments", args.segments)) if path is not None]
    if args.segments_K is not None and not args.segments:
        raise _Refused("--segments-K needs --segments FILE.csv")
    _check_outputs([args.path], outputs)
    step.now = f"reading {_escaped(args.path)}"
    text = _read_text(args.path)
    if _layout(_table(args.path, text).header, {}) == "long" or str(args.path).lower().endswith((".parquet", ".pq")):
        raise _Refused(f"{_escaped(args.path)}: a long file (one row a store and week) needs the analyst's package "
                       "em_sales_tools beside em_sales.py; this file alone reads a wide one (the price, a column a store)")
    price, sales, stores = read_panel(args.path, text)
    y, X = panel_arrays(price, sales)
    names = ["intercept", "log price"]
    try:
        stats = _statistics(_wide_sums(y, X), _model(args.sigma, args.store_effects), names)
    except InputError as problem:
        raise InputError(f"{_escaped(args.path)}: {problem}") from None
    _check_Ks(args.K, len(stores), f"the {len(stores)} stores in {_escaped(args.path)}")
    search = Search(args.n_init, args.seed, args.tol)
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *rest, **named: print(f"warning: {_escaped(message)}", file=sys.stderr)
        with np.errstate(all="ignore"):
            step.now = "fitting"
            fits = sweep(stats, args.K, search, [names[j] for j in stats.columns])
            out = results(fits, stores, len(price), args.csv or "data/example.csv", search)
        for note in out["notes"]:
            _warn(note)
    step.now = "writing the outputs"
    return _written(args, out, [(args.segments, lambda: segments_csv(stores, fits[args.segments_K or out["best_K"]].W))],
                    report(out))


def _written(args, results, more, text, rows=None):
    """results.json (args.output; rows: results_json's) and the `more` outputs [(path or None, its
    content())] written all together or not at all, after the report `text` is out; the exit code."""
    outputs = _Outputs()
    try:
        outputs.stage(args.output, results_json(results, rows))
        for path, content in more:
            if path:
                outputs.stage(path, content())
        _say("" if args.quiet else text + "\n")
        outputs.commit()
    finally:
        outputs.close()
    if not args.quiet:
        _say(f"Results written to {', '.join([args.output] + [path for path, _ in more if path])}\n")
    return 0


def _say(text):
    """Print to standard output; a full or broken one is a refusal (before the files are moved
    into place, nothing is touched)."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as problem:
        _quiet_stdout()
        raise _Refused(f"cannot write the report to standard output: {problem.strerror}") from None


if __name__ == "__main__":
    if getattr(sys.modules.get("__main__"), "main", None) is main:   # the package's `import em_sales` is this
        sys.modules.setdefault("em_sales", sys.modules["__main__"])  # script, not a second copy compiled again
    raise SystemExit(main())
