"""em_sales: segments of stores from weekly sales, by maximum likelihood with the EM algorithm.

Model, for store i = 1..N and week t:

    log S_it = [a_i +] x_it' theta_c + eps_it,   eps_it ~ N(0, sigma_c^2),   Pr[C_i = c] = pi_c,

where x_it = (1, log p_it, further columns) is a row of X (shared by all stores, T x P, or each
store its own, T x N x P), C_i is the store's unobserved segment and theta_c its coefficients. The
whole store shares one segment, so the likelihood of store i is a mixture over c of the product
over its observed weeks. The assignment's model is the default: X = [1, log p_t], sigma fixed at 1,
no store effects a_i. Options: sigma estimated ("common": one sigma for all segments, "segment":
one per segment) and store fixed effects (store_effects=True: each store its own intercept a_i,
estimated by the within-store likelihood, in which the a_i do not appear).

The assignment's five functions, with its call forms (the options are keyword arguments):

    LogL(theta, pi, y, X) -> float            observed-data log-likelihood
    EStep(theta, pi, y, X) -> W (N, K)        W[i, c] = Pr[C_i = c | y_i, X, theta, pi]
    MStep(y, X, W) -> (theta, pi)             maximiser of the expected complete-data log-likelihood
    EM(K, y, X, tol, max_iter, seed) -> (theta, pi, loglik)
    Estimate(K, y, X, n_init, seed) -> (theta, pi, loglik)   best of n_init runs of EM

y is T x N (log sales; NaN = no observation that week). theta is accepted flat,
(alpha_1, beta_1, ..., alpha_K, beta_K), or as a K x P array, and is returned as a K x P array whose
row c is segment c. With sigma="common" or "segment", MStep, EM and Estimate also return the
estimated sigma (K,), right after pi. Everything is computed from per-store sufficient statistics
(n_i, X_i'X_i, X_i'y_i, y_i'y_i), so after one pass over the data an iteration costs O(N K P^2),
whatever T is. The README derives every formula used here.

Run as a program (python em_sales.py data.csv) it estimates K = 2, 3, 4, prints a report and
writes results.json; see main().
"""
import math
import warnings
from typing import NamedTuple

import numpy as np

__version__ = "0.9.0"
__all__ = ["LogL", "EStep", "MStep", "EM", "Estimate", "StandardErrors", "fit_mixture", "fit_stats",
           "sufficient_statistics", "model_statistics", "read_panel", "read_long", "load", "panel_arrays",
           "analyse", "report", "results_json", "segments_csv", "plot", "main", "Fit", "Stats", "Sums",
           "LongPanel", "Loaded", "InputError", "ConvergenceWarning", "__version__"]

LOG_2PI = math.log(2.0 * math.pi)
NEWTON_GAIN = 1.0      # EM tries Newton steps once an iteration gains less log-likelihood than this
ROUNDING = 1e-13       # relative rounding error of a log-likelihood: changes below it are noise
WARM_UP = 30           # Estimate's runs start with this many plain EM iterations, all in one batch,
WARM_UP_LARGE = 10     # ... or this many when starts x K x stores > BATCH_LARGE (there the work,
BATCH_LARGE = 1_000_000  # not numpy's per-call overhead, is the cost, and SQUAREM does it faster)
VARIANCE_FLOOR = 1e-10  # an estimated sigma_c^2 is at least this times the pooled residual variance
SIGMA_MODES = ("common", "segment")
NEAR_TIE = 2.0         # a second maximum this close to the best gets split-and-merge moves too


MAX_STARTS = 10_000    # n_init above this is refused: 10 to 100 starts are plenty


class ConvergenceWarning(UserWarning):
    """EM stopped at max_iter before its convergence rule was met."""


def _warn(message, category=UserWarning):
    """warnings.warn pointing at the first caller outside this file (the user's line)."""
    import sys
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


# ---------------------------------------------------------------------------------------------
# Sufficient statistics
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
    """The panel as the model sees it: per-store sufficient statistics and the model's settings.

    n (N,)          observed weeks of each store
    m (N,)          weeks that carry information on theta and sigma: n_i, or n_i - 1 with store
                    effects (one is spent on a_i)
    const (N,)      the part of log f(y_i | c) free of the parameters: -(m_i/2) log 2 pi, and
                    -(1/2) log n_i more with store effects
    XtX (N, P*P), Xty (N, P), yty (N,): X_i'X_i, X_i'y_i, y_i'y_i (within-store centred with
                    store effects, whose intercept column is then dropped)
    sigma           a number (sigma fixed at it), "common" or "segment" (estimated)
    price           the column of the price coefficient: the first column of X that varies
    columns         the columns of X that the statistics keep (all, or all but the intercept)
    pooled_s2       residual variance of pooled least squares (K = 1): the scale of sigma^2
    Z (N, P*P+P+4)  [X_i'X_i, X_i'y_i, y_i'y_i, m_i, const_i, 1] side by side: the kernel's one
                    matrix product with it gives all log densities (E-step) or all of a segment's
                    weighted sums (M-step)
    """
    n: np.ndarray
    m: np.ndarray
    const: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    yty: np.ndarray
    sigma: object
    price: int
    columns: tuple
    pooled_s2: float
    store_effects: bool
    Z: np.ndarray

    @property
    def P(self):
        return self.Xty.shape[1]

    @property
    def estimates_sigma(self):
        return isinstance(self.sigma, str)


def _check_sigma_setting(sigma):
    """A sigma setting: a positive number (fixed) or "common" / "segment" (estimated)."""
    if isinstance(sigma, str):
        if sigma not in SIGMA_MODES:
            raise ValueError(f"sigma must be a positive number, 'common' or 'segment'; got {sigma!r}")
        return sigma
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, 'common' or 'segment'; got {sigma!r}")
    return float(sigma)


def _wide_sums(y, X):
    """Sums of a wide panel: y (T, N) with NaN where unobserved, X (T, P) or (T, N, P)."""
    y, X = _array(y, "y"), _array(X, "X")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or X.ndim not in (2, 3):
        raise ValueError(f"y must be T x N and X must be T x P or T x N x P; got shapes {y.shape} and {X.shape}")
    T, N = y.shape
    if X.shape[0] != T:
        raise ValueError(f"y has {T} rows (weeks) but X has {X.shape[0]}: they must match")
    if X.ndim == 3 and X.shape[1] != N:
        raise ValueError(f"X is T x N x P with N = {X.shape[1]} but y has {N} columns (stores)")
    if N == 0 or T == 0 or X.shape[-1] == 0:
        raise ValueError(f"the panel is empty: y has shape {y.shape}, X {X.shape}")
    if np.isinf(y).any():
        raise ValueError("y has an infinite entry (log of a zero sale?)")
    _check_scale(y, X)
    observed = ~np.isnan(y)
    n = observed.sum(axis=0)
    if (n == 0).any():
        store = int(np.argmax(n == 0))
        raise ValueError(f"store {store} (column {store} of y) has no observed week")
    P = X.shape[-1]
    y0 = np.where(observed, y, 0.0)
    if X.ndim == 2:
        if not np.all(np.isfinite(X[observed.any(axis=1)])):
            raise ValueError("X has a missing or infinite entry (a missing, zero or negative price?)")
        X = np.where(np.isfinite(X), X, 0.0)
        if observed.all():                       # the usual case: every store shares X'X
            XtX = np.tile((X.T @ X).ravel(), (N, 1))
            sx = np.tile(X.sum(axis=0), (N, 1))
        else:
            XtX = observed.T.astype(float) @ (X[:, :, None] * X[:, None, :]).reshape(T, P * P)
            sx = observed.T.astype(float) @ X
        Xty = y0.T @ X
    else:
        if not np.all(np.isfinite(X[observed])):
            raise ValueError("X has a missing or infinite entry in a week where y is observed")
        X0 = np.where(observed[:, :, None], X, 0.0)
        XtX = np.einsum("tnp,tnq->npq", X0, X0).reshape(N, P * P)
        Xty = np.einsum("tnp,tn->np", X0, y0)
        sx = X0.sum(axis=0)
    return Sums(n.astype(float), XtX, Xty, np.einsum("tn,tn->n", y0, y0), sx, y0.sum(axis=0))


def _array(value, name):
    """value as a float array, or ValueError naming the argument."""
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers; got {type(value).__name__} "
                         f"{_shown(repr(value), 60)}") from None


LOG_SALES_LIMIT = 100.0   # |log S| above this is no log of a real quantity (e^100 = 2.7e43)


def _check_scale(y, X):
    """ValueError for values whose squares overflow (nothing can be estimated from them); a
    warning where y cannot be log sales (raw sales passed by mistake give nonsense segments)."""
    tops = {}
    for name, values in (("y", y), ("X", X)):
        finite = np.isfinite(values)
        tops[name] = top = np.abs(values[finite]).max() if finite.any() else 0.0
        if top > 1e100:
            raise ValueError(f"{name} has values as large as {top:.3g}: too large to estimate from "
                             "(y is log sales, X holds 1, log price, ...)")
    top = tops["y"]
    if top > LOG_SALES_LIMIT:
        _warn(f"y has values as large as {top:.6g}: y must be log sales, and no log of a real quantity "
              f"exceeds {LOG_SALES_LIMIT:g} (e^{LOG_SALES_LIMIT:g} = 2.7e43). Raw sales? Pass np.log(sales)",
              UserWarning)


def _grouped_sums(store, y, X, N):
    """Sums of a long panel, one row a store-week, by grouped sums (no T x N array is built):
    store (R,) in 0..N-1, y (R,), X (R, P)."""
    P = X.shape[1]
    XtX = np.empty((N, P * P))
    for j in range(P):
        for k in range(j, P):
            XtX[:, j * P + k] = XtX[:, k * P + j] = np.bincount(store, X[:, j] * X[:, k], N)
    return Sums(np.bincount(store, None, N).astype(float), XtX,
                np.column_stack([np.bincount(store, X[:, j] * y, N) for j in range(P)]),
                np.bincount(store, y * y, N),
                np.column_stack([np.bincount(store, X[:, j], N) for j in range(P)]),
                np.bincount(store, y, N))


def _varies(sums):
    """(P,) True for each column of X that takes more than one value over the observed cells."""
    P = sums.Xty.shape[1]
    total = sums.n.sum()
    mean = sums.sx.sum(axis=0) / total
    square = sums.XtX.sum(axis=0).reshape(P, P).diagonal() / total
    return square - mean ** 2 > 1e-12 * np.maximum(square, 1e-300)


def model_statistics(sums, sigma=1.0, store_effects=False, names=None):
    """Stats for a model from a panel's Sums: the sigma setting, and with store_effects the
    within-store transform (README, "Store fixed effects"):
        X_i'X_i - s_i s_i'/n_i,  X_i'y_i - s_i t_i/n_i,  y_i'y_i - t_i^2/n_i,
    with s_i, t_i the store's sums of x and y; a column of X that is constant is the intercept
    and is dropped, one that is constant within every store (but not overall) is refused.
    names: the columns' names, for messages (default: "column j of X")."""
    sigma = _check_sigma_setting(sigma)
    n, XtX, Xty, yty, sx, sy = sums
    N, P = Xty.shape
    varies = _varies(sums)
    columns = tuple(range(P))
    m, offset = n, np.zeros(N)
    if store_effects:
        columns = tuple(j for j in range(P) if varies[j])
        if not columns:
            raise ValueError("with store effects X needs a column that varies (the log price)")
        keep = np.array(columns)
        sx_, P = sx[:, keep], len(columns)
        XtX = (XtX.reshape(N, len(varies), len(varies))[:, keep][:, :, keep]
               - sx_[:, :, None] * sx_[:, None, :] / n[:, None, None]).reshape(N, P * P)
        Xty = Xty[:, keep] - sx_ * (sy / n)[:, None]
        yty = np.maximum(yty - sy * sy / n, 0.0)
        m, offset = n - 1.0, -0.5 * np.log(n)
        within = XtX.sum(axis=0).reshape(P, P).diagonal()
        raw = sums.XtX.sum(axis=0).reshape(len(varies), -1).diagonal()[keep]
        absorbed = within <= 1e-12 * raw
        if absorbed.any():
            j = columns[int(np.argmax(absorbed))]
            raise ValueError(f"{repr(names[j]) if names else f'column {j} of X'} is constant within every "
                             "store (or every store has one week): the store effects absorb it, so it "
                             "cannot be estimated")
        price = 0
    else:
        price = int(np.argmax(varies)) if varies.any() else 0
    A = XtX.sum(axis=0).reshape(P, P)
    scale = np.sqrt(np.maximum(A.diagonal(), 1e-300))
    if P > 1 and np.linalg.eigvalsh(A / np.outer(scale, scale)).min() < 1e-12 or not A.diagonal().min() > 0:
        raise ValueError(f"the columns of X are collinear (rank < {P}): a price that never changes, or "
                         "changes too little to tell from a constant, cannot identify a price effect")
    theta = np.linalg.solve(A, Xty.sum(axis=0))
    pooled_s2 = max(yty.sum() - theta @ Xty.sum(axis=0), 0.0) / max(m.sum(), 1.0)
    if isinstance(sigma, str) and not pooled_s2 > 0:
        raise ValueError("every observation is fitted exactly: sigma cannot be estimated")
    const = offset - 0.5 * LOG_2PI * m
    return Stats(n, m, const, XtX, Xty, yty, sigma, price, columns, pooled_s2, bool(store_effects),
                 np.column_stack([XtX, Xty, yty, m, const, np.ones(N)]))


def sufficient_statistics(y, X, sigma=1.0, store_effects=False):
    """Check a panel and reduce it to the per-store sufficient statistics of a model.

    y: (T, N) log sales, NaN where a store has no observation that week. X: (T, P), shared by all
    stores, or (T, N, P), each store its own. sigma: a positive number (fixed), "common" or
    "segment". Raises ValueError naming the problem when the panel cannot identify the model.
    """
    return model_statistics(_wide_sums(y, X), sigma, store_effects)


# ---------------------------------------------------------------------------------------------
# The kernel: log densities, E-step, M-step
# ---------------------------------------------------------------------------------------------

def _rss(stats, theta):
    """(..., K, N) residual sums of squares R_ic = y_i'y_i - 2 theta_c'X_i'y_i + theta_c'X_i'X_i theta_c
    for theta (..., K, P): segments in rows, the layout in which sums and maxima over segments are
    fast. A leading batch of parameter sets is allowed (split-and-merge tries many at once)."""
    P = theta.shape[-1]
    flat = theta.reshape(-1, P)                    # one matrix product for a whole batch
    outer = (flat[:, :, None] * flat[:, None, :]).reshape(-1, P * P)
    rss = outer @ stats.XtX.T                      # theta_c'X_i'X_i theta_c, (B K, N); in place
    rss -= 2.0 * (flat @ stats.Xty.T)              # from here on: large panels are memory-bound
    rss += stats.yty
    return rss.reshape(theta.shape[:-1] + (len(stats.yty),))


def _log_density(stats, theta, sigma, pi=None):
    """(..., K, N) array of log f(y_i | C_i = c) = const_i - m_i log sigma_c - R_ic / (2 sigma_c^2),
    for theta (..., K, P) and sigma (..., K) (const_i: see Stats); with pi (..., K), log pi_c f_ic.
    As R_ic = y_i'y_i - 2 theta_c'X_i'y_i + theta_c'X_i'X_i theta_c, this is phi_c . Z_i with
        phi_c = (a_c theta_c theta_c', -2 a_c theta_c, a_c, -log sigma_c, 1, log pi_c),
    a_c = -1 / (2 sigma_c^2): one matrix product for all segments, stores and parameter sets."""
    P = theta.shape[-1]
    a = -0.5 / (sigma * sigma)
    outer = (theta[..., :, None] * theta[..., None, :]).reshape(theta.shape[:-1] + (P * P,))
    phi = np.empty(theta.shape[:-1] + (P * P + P + 4,))
    np.multiply(outer, a[..., None], out=phi[..., :P * P])
    np.multiply(theta, -2 * a[..., None], out=phi[..., P * P:P * P + P])
    phi[..., -4] = a
    phi[..., -3] = -np.log(sigma)
    phi[..., -2] = 1.0
    phi[..., -1] = 0.0 if pi is None else np.log(pi, out=np.full(pi.shape, -np.inf), where=pi > 0)
    return (phi.reshape(-1, phi.shape[-1]) @ stats.Z.T).reshape(theta.shape[:-1] + (len(stats.Z),))


def _e_step(stats, theta, pi, sigma):
    """Posterior segment probabilities W (..., N, K) and the log-likelihood, in log space:
    log sum_c exp(a_c) = max_c a_c + log sum_c exp(a_c - max_c a_c), as scipy's logsumexp does,
    written out because this is the innermost loop (and twice as fast so).
    An empty segment (pi_c = 0) gets log pi_c = -inf and so W[:, c] = 0, without a NaN.
    """
    log_joint = _log_density(stats, theta, sigma, pi)
    top = log_joint.max(axis=-2)
    log_joint -= top[..., None, :]
    joint = np.exp(log_joint, out=log_joint)
    total = joint.sum(axis=-2)
    loglik = top.sum(axis=-1) + np.log(total).sum(axis=-1)
    joint /= total[..., None, :]
    return joint.swapaxes(-1, -2), (float(loglik) if loglik.ndim == 0 else loglik)


def _pooled_theta(stats):
    """Least squares over all stores and weeks: the K = 1 estimate."""
    P = stats.P
    return np.linalg.solve(stats.XtX.sum(axis=0).reshape(P, P), stats.Xty.sum(axis=0))


def _fixed_sigma(stats, K):
    """sigma (K,) at the start of a run: the fixed value, or the pooled residual sd."""
    return np.full(K, stats.sigma if not stats.estimates_sigma else math.sqrt(stats.pooled_s2))


def _thin(stats, weeks):
    """(..., K) True for a segment too thin to estimate its own sigma: it holds fewer than P + 1
    observed weeks, weeks (..., K) = sum_i w_ic m_i, so that sigma_c -> 0 and an unbounded
    likelihood are in reach. Only with sigma per segment; a common sigma is bounded away from 0 by
    the other segments."""
    return weeks < stats.P + 1 if stats.sigma == "segment" else np.zeros(weeks.shape, dtype=bool)


def _admissible(stats, W):
    """False where a segment of W (..., N, K) is _thin (only sigma per segment can have one)."""
    return stats.sigma != "segment" or not _thin(stats, W.swapaxes(-1, -2) @ stats.m).any()


def _m_step(stats, W):
    """(theta, pi, sigma) maximising the expected complete-data log-likelihood for W (..., N, K):
        theta_c = (sum_i w_ic X_i'X_i)^-1 sum_i w_ic X_i'y_i,   pi_c = mean_i w_ic,
        sigma_c^2 = sum_i w_ic R_ic / sum_i w_ic m_i  (common: summed over c before dividing).
    A segment with no weight (or a singular weighted X'X, or with sigma per segment fewer than
    P + 1 weighted weeks: _thin) cannot be estimated: it gets pi_c = 0, the pooled least-squares
    theta and sigma, so that nothing downstream sees a NaN.
    """
    P = stats.P
    weights = W.swapaxes(-1, -2)                                        # (..., K, N)
    sums = weights @ stats.Z          # (..., K, P*P+P+4): sum_i w_ic [X'X, X'y, y'y, m, const, 1]_i
    A = sums[..., :P * P].reshape(sums.shape[:-1] + (P, P))
    b = sums[..., P * P:P * P + P]
    yy, weeks = sums[..., P * P + P], sums[..., P * P + P + 1]
    pi = sums[..., -1] / len(stats.Z)
    # an empty segment (no weight: A = 0) would make the whole batch's solve fail: set those
    # aside and solve the rest at once; a singular system with weight is rarer (solved one by one)
    singular = ~(sums[..., -1] > 0)
    if singular.any():
        A = np.where(singular[..., None, None], np.eye(P), A)
    try:
        theta = np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:                # singular after all: solve one by one
        theta = np.full(b.shape, np.nan)
        for index in np.ndindex(b.shape[:-1]):
            try:
                theta[index] = np.linalg.solve(A[index], b[index])
            except np.linalg.LinAlgError:
                pass
    theta[singular] = np.nan
    ok = np.isfinite(theta).all(axis=-1) & (pi > 0) & ~_thin(stats, weeks)
    if not ok.all():
        theta[~ok] = _pooled_theta(stats)
        pi = np.where(ok, pi, 0.0)
        pi = pi / pi.sum(axis=-1, keepdims=True)
    if not stats.estimates_sigma:
        return theta, pi, np.full(pi.shape, stats.sigma)
    rss = yy - (theta * b).sum(axis=-1)                      # sum_i w_ic R_ic, as A_c theta_c = b_c
    if not ok.all():                                         # not so for the pooled theta
        rss += (theta * ((A @ theta[..., None])[..., 0] - b)).sum(axis=-1)
    if stats.sigma == "common":
        s2 = np.repeat(rss.sum(axis=-1, keepdims=True) / stats.m.sum(), pi.shape[-1], axis=-1)
    else:
        s2 = np.where(ok, rss / np.maximum(weeks, 1e-300), stats.pooled_s2)
    return theta, pi, np.sqrt(np.maximum(s2, VARIANCE_FLOOR * stats.pooled_s2))


# ---------------------------------------------------------------------------------------------
# Score and observed information: Newton steps near the optimum, standard errors at it
# ---------------------------------------------------------------------------------------------

def _n_tau(stats, K):
    """How many log sigma parameters the model estimates: 0 (fixed), 1 (common) or K."""
    return 0 if not stats.estimates_sigma else 1 if stats.sigma == "common" else K


def _score_hessian(stats, theta, pi, sigma, W):
    """Gradient (D,) and Hessian (D, D) of the log-likelihood at (theta, pi, sigma), W = EStep there.

    Parameters psi = (theta_1, ..., theta_K, tau, eta_1, ..., eta_{K-1}), D = K P + n_tau + K - 1,
    with tau = log sigma (none, one common or one per segment) and pi = softmax(eta_1, ..., 0).
    With s_ic the gradient of log(pi_c f_ic) and g_i = sum_c w_ic s_ic the store's score, Louis'
    identity gives (README, "Standard errors")
        H = sum_i sum_c w_ic (d2 log(pi_c f_ic) + s_ic s_ic') - sum_i g_i g_i',
    where s_ic is v_ic = (u_ic / sigma_c^2, R_ic / sigma_c^2 - m_i) in segment c's block (theta_c,
    tau_c), u_ic = X_i'y_i - X_i'X_i theta_c, and e_c - pi in the eta block. It is computed in an
    expanded parameter (each segment its own tau_c, even for a common sigma) and then summed into
    psi: a common tau is the sum of the K expanded ones.
    """
    N, K = W.shape
    P = stats.P
    KP, nt = K * P, _n_tau(stats, K)
    Q = P + (nt > 0)                                              # a segment's block
    s2 = sigma * sigma
    u = stats.Xty[:, None, :] - (stats.XtX.reshape(N, P, P) @ theta.T).swapaxes(1, 2)   # (N, K, P)
    V = np.empty((N, K, Q))                                       # v_ic
    np.divide(u, s2[:, None], out=V[:, :, :P])
    if nt:
        R = _rss(stats, theta).T                                  # (N, K)
        V[:, :, P] = R / s2 - stats.m[:, None]
    WV = W[:, :, None] * V
    p = pi[:K - 1]
    G = np.concatenate([WV.reshape(N, K * Q), W[:, :K - 1] - p], axis=1)      # g_i, expanded
    H = -(G.T @ G)
    within = np.matmul(WV.transpose(1, 2, 0), V.transpose(1, 0, 2))            # sum_i w v v'
    within[:, :P, :P] -= (W.T @ stats.XtX).reshape(K, P, P) / s2[:, None, None]
    if nt:                                                        # second derivatives in tau_c
        cross = 2 * np.einsum("nk,nkp->kp", W, u) / s2[:, None]
        within[:, :P, P] -= cross
        within[:, P, :P] -= cross
        within[:, P, P] -= 2 * (W * R).sum(axis=0) / s2
    blocks = np.arange(K * Q).reshape(K, Q)
    H[blocks[:, :, None], blocks[:, None, :]] += within
    H[:K * Q, K * Q:] += (WV.sum(axis=0)[:, :, None] * (np.eye(K)[:, :K - 1] - p)[:, None, :]).reshape(K * Q, K - 1)
    H[K * Q:, :K * Q] = H[:K * Q, K * Q:].T
    m = W.sum(axis=0)[:K - 1]                                     # expected segment sizes
    H[K * Q:, K * Q:] += np.diag(m - N * p) - np.outer(m, p) - np.outer(p, m) + 2 * N * np.outer(p, p)
    # where each expanded parameter goes in psi: theta_c, then tau_c (all K into one if common)
    to = np.arange(KP).reshape(K, P)
    if nt:
        to = np.column_stack([to, KP + (np.arange(K) if nt == K else np.zeros(K, dtype=int))])
    to = np.concatenate([to.ravel(), KP + nt + np.arange(K - 1)])
    M = np.zeros((len(to), KP + nt + K - 1))
    M[np.arange(len(to)), to] = 1.0
    return G.sum(axis=0) @ M, M.T @ H @ M


FLAT = 1e-8     # a curvature below FLAT times the largest one is flat: a ridge, not a saddle


def _newton_direction(stats, theta, pi, sigma, W):
    """(step, decrement, flat) for psi at (theta, pi, sigma), or None where no step applies (an
    empty segment).

    Where -H is positive definite this is Newton's step -H^-1 g. Where it is not (on a ridge or
    near a saddle, where EM crawls) the step uses |eigenvalues| of -H, floored at FLAT times the
    largest (saddle-free Newton, Dauphin et al. 2014), which still points uphill. decrement =
    sum_k (v_k'g)^2 / max(lambda_k, floor) is twice the gain a concave quadratic model predicts;
    it is infinite where -H has a real negative curvature (a saddle: more to gain). flat is True
    where -H has flat directions (an over-fitted model: two equal segments, or one that can move
    without changing the likelihood); there the posteriors are not unique.
    """
    if pi.min() < 1e-12:
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
    KP, nt = K * P, _n_tau(stats, K)
    new_theta = theta + step[:KP].reshape(K, P)
    new_sigma = sigma * np.exp(step[KP:KP + nt]) if nt else sigma
    eta = np.log(pi[:K - 1]) - np.log(pi[K - 1])
    logits = np.append(eta + step[KP + nt:], 0.0)
    new_pi = np.exp(logits - logits.max())
    return new_theta, new_pi / new_pi.sum(), np.broadcast_to(new_sigma, (K,)).copy()


def _newton_step(stats, theta, pi, sigma, W, loglik):
    """A Newton step (see _newton_direction), halved until the likelihood rises; None where no
    step applies or none goes uphill. Returns (theta, pi, sigma, W, loglik, decrement, flat)."""
    direction = _newton_direction(stats, theta, pi, sigma, W)
    if direction is None:
        return None
    step, decrement, flat = direction
    for _ in range(6):
        new = _moved(stats, theta, pi, sigma, step)
        if np.all(np.isfinite(new[0])) and new[2].min() > 0:
            new_W, new_loglik = _e_step(stats, *new)
            if new_loglik >= loglik - ROUNDING * abs(loglik) and _admissible(stats, new_W):
                return new + (new_W, new_loglik, decrement, flat)   # at the maximum: equal up to rounding
        step = step / 2
    return None


# ---------------------------------------------------------------------------------------------
# The EM loop
# ---------------------------------------------------------------------------------------------

class Fit(NamedTuple):
    """One EM run: estimates in segment order, sigma (K,), posterior W (N, K), iterations,
    convergence."""
    theta: np.ndarray
    pi: np.ndarray
    sigma: np.ndarray
    loglik: float
    W: np.ndarray
    n_iter: int
    converged: bool


def _em_step(stats, W):
    params = _m_step(stats, W)
    return params + _e_step(stats, *params)


def _stacked(starts):
    """A list of (theta (K, P), pi (K,), sigma (K,)) starts as one batch: theta (B, K, P),
    pi (B, K), sigma (B, K)."""
    return tuple(np.stack([start[j] for start in starts]) for j in range(3))


def _plain_em(stats, batch, iterations):
    """`iterations` plain EM steps from each of B starts, batch = (theta (B, K, P), pi (B, K),
    sigma (B, K)), all at once, in chunks that keep the (chunk, K, N) arrays near 16 MB.
    Returns theta (B, K, P), pi (B, K), sigma (B, K), loglik (B,) at the end and gain (B,), what
    the last iteration added to the log-likelihood."""
    chunk = max(1, 2_000_000 // (batch[0].shape[1] * len(stats.n)))
    parts = []
    for first in range(0, len(batch[0]), chunk):
        params = tuple(part[first:first + chunk] for part in batch)
        before = np.full(len(params[0]), -np.inf)
        for _ in range(iterations):
            W, before = _e_step(stats, *params)
            params = _m_step(stats, W)
        loglik = _e_step(stats, *params)[1]
        parts.append(params + (loglik, loglik - before))
    return tuple(np.concatenate(part) for part in zip(*parts))


def _squarem_step(stats, theta, pi, sigma, W, loglik):
    """Two EM steps extrapolated along their path (SQUAREM, Varadhan & Roland 2008, SqS3), in
    x = (theta, pi, sigma).

    The extrapolated point is kept only when it is a valid parameter (pi >= 0, sigma > 0, no
    _thin segment) with a log-likelihood at least that of the two plain steps, so the likelihood
    never goes down.
    """
    K, P = theta.shape
    th1, pi1, s1, W1, _ = _em_step(stats, W)
    th2, pi2, s2, W2, ll2 = _em_step(stats, W1)
    x0, x1, x2 = (np.concatenate([t.ravel(), p, s]) for t, p, s in
                  ((theta, pi, sigma), (th1, pi1, s1), (th2, pi2, s2)))
    r, v = x1 - x0, x2 - 2 * x1 + x0
    v_norm = math.sqrt(v @ v)
    if v_norm > 0:
        alpha = min(-math.sqrt(r @ r) / v_norm, -1.0)
        for _ in range(3):                                       # alpha = -1 gives x2 itself
            if alpha > -1.01:
                break
            x = x0 - 2 * alpha * r + alpha * alpha * v
            new = x[:K * P].reshape(K, P), x[K * P:K * P + K], x[K * P + K:]
            if new[1].min() >= 0 and new[2].min() > 0:
                new_W, new_ll = _e_step(stats, *new)
                if new_ll >= ll2 and _admissible(stats, new_W):
                    return new + (new_W, new_ll)
            alpha = (alpha - 1) / 2                              # back off towards x2
    return th2, pi2, s2, W2, ll2


def _run_em(stats, theta, pi, sigma, tol=1e-8, max_iter=10000, accelerate=True, known=(), gain=math.inf):
    """EM from (theta, pi, sigma) until converged; returns a Fit.

    Converged means: no posterior probability moved by more than tol in the last iteration, the
    log-likelihood rose by less than tol, and (where the Hessian is negative definite) a Newton
    step would add less than tol: the last test is what tells a maximum from a slow plateau.
    accelerate=False runs plain EM, one M-step and one E-step an iteration. Accelerated runs take
    Newton steps once the gains are small (SQUAREM steps before), so the last test comes with the
    step. See _polish for the last digits. known: converged Fits of earlier runs; a run that
    reaches one of them (_same_point) ends there, as that maximum is certified already. gain: what
    the plain EM iteration that led to (theta, pi, sigma) added, if any (small: try Newton at once).
    """
    W, loglik = _e_step(stats, theta, pi, sigma)
    for iteration in range(1, max_iter + 1):
        if gain < NEWTON_GAIN:
            for fit in known:
                if _same_point(fit, W, loglik):
                    return fit._replace(n_iter=iteration - 1)
        decrement, flat, newton = None, False, None
        # Newton only near a maximum (where the last step gained little): elsewhere the Hessian
        # is rarely negative definite and computing it would be wasted
        tried_newton = accelerate and gain < NEWTON_GAIN
        if tried_newton:
            newton = _newton_step(stats, theta, pi, sigma, W, loglik)
        if newton is not None:
            *new, decrement, flat = newton
        elif accelerate:
            new = _squarem_step(stats, theta, pi, sigma, W, loglik)
        else:
            new = _em_step(stats, W)
        gain = new[4] - loglik
        # on a flat ridge the posteriors are not unique: a zero gradient is the test there
        still = gain <= tol and (flat or np.abs(new[3] - W).max() <= tol)
        theta, pi, sigma, W, loglik = new
        if still and decrement is None and (tried_newton or not accelerate):
            decrement = _remaining_gain(stats, theta, pi, sigma, W)   # 0 where Newton cannot help
        if still and decrement is not None and decrement <= 2 * tol:
            return Fit(theta, pi, sigma, loglik, W, iteration, True)
    return Fit(theta, pi, sigma, loglik, W, max_iter, False)


def _same_point(fit, W, loglik):
    """True where (W, loglik) is the converged fit's point, whatever the segments' order: the
    same log-likelihood up to rounding and every posterior probability within 1e-6 of the fit's
    in the matching segment (the M-step of W gives its theta)."""
    if not (abs(loglik - fit.loglik) <= 1e-9 * max(1.0, abs(loglik)) and fit.converged):
        return False
    gaps = np.abs(W[:, :, None] - fit.W[:, None, :]).max(axis=0)      # (K, K): segment a vs b
    match = gaps.argmin(axis=1)
    return len(set(match.tolist())) == len(match) and gaps[np.arange(len(match)), match].max() <= 1e-6


def _polish(stats, fit):
    """Up to two more Newton steps from a converged fit: Newton converges quadratically there, so
    the estimate becomes the maximum to machine precision, not merely within tol of it. The
    second only where the first had more to gain than rounding (its decrement)."""
    for _ in range(2):
        step = (_newton_step(stats, fit.theta, fit.pi, fit.sigma, fit.W, fit.loglik)
                if fit.converged else None)
        if step is None:
            break
        fit = fit._replace(theta=step[0], pi=step[1], sigma=step[2], W=step[3], loglik=step[4])
        if step[5] <= ROUNDING * abs(fit.loglik):
            break
    return fit


def _remaining_gain(stats, theta, pi, sigma, W):
    """Newton decrement at (theta, pi, sigma); 0 where the log-likelihood is not locally concave
    (a saddle or an empty segment), where Newton has nothing to say about a plain EM run's end."""
    direction = _newton_direction(stats, theta, pi, sigma, W)
    return 0.0 if direction is None or math.isinf(direction[1]) else direction[1]


# ---------------------------------------------------------------------------------------------
# Starting values and the search for the global maximum
# ---------------------------------------------------------------------------------------------

def _store_coefficients(stats):
    """Each store's own least-squares coefficients b_i (N, P), the sufficient statistic of
    store i for theta: R_ic = R_i + (b_i - theta_c)' X_i'X_i (b_i - theta_c).
    A store with too few weeks to identify b_i gets the minimum-norm solution."""
    N, P = stats.Xty.shape
    XtX = stats.XtX.reshape(N, P, P)
    try:
        return np.linalg.solve(XtX, stats.Xty[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(XtX) @ stats.Xty[:, :, None])[:, :, 0]


def _distances(stats, coefficients, centres):
    """(N, K) matrix of (b_i - theta_c)' X_i'X_i (b_i - theta_c) for centres (K, P): the residual
    sum of squares that store i adds when its own coefficients b_i are replaced by theta_c."""
    P = coefficients.shape[1]
    gap = coefficients[:, None, :] - centres[None]                     # (N, K, P)
    return np.einsum("nkp,npq,nkq->nk", gap, stats.XtX.reshape(-1, P, P), gap)


def _kmeanspp_starts(stats, coefficients, K, rng, count):
    """`count` k-means++ seedings (Arthur & Vassilvitskii 2007) on the stores' own coefficients,
    in the likelihood's own metric, all at once: K stores' b_i each, each drawn with probability
    proportional to its distance (b_i - theta)' X_i'X_i (b_i - theta) to the nearest one drawn
    before. pi uniform, sigma fixed or the pooled residual sd. Returns theta (count, K, P),
    pi (count, K), sigma (count, K). Each start's draws come from rng in turn, as one by one."""
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
    return coefficients[chosen], np.full((count, K), 1.0 / K), np.tile(_fixed_sigma(stats, K), (count, 1))


def _axis(stats, coefficients, fit, split):
    """One standard deviation along the main axis of segment `split`'s stores' coefficients,
    measured in the likelihood's metric (P,); None where the segment is empty or its stores do
    not identify theta (their summed X_i'X_i is singular)."""
    P = fit.theta.shape[1]
    w = fit.W[:, split]
    if not w.sum() > 0:
        return None
    information = (w @ stats.XtX).reshape(P, P) / w.sum()       # mean X_i'X_i of the segment
    gap = coefficients - fit.theta[split]
    spread = np.einsum("n,np,nq->pq", w, gap, gap) / w.sum()
    try:
        root = np.linalg.cholesky(information)                    # whiten, take the main axis
    except np.linalg.LinAlgError:
        return None
    values, vectors = np.linalg.eigh(root.T @ spread @ root)
    return np.linalg.solve(root.T, vectors[:, -1]) * math.sqrt(max(values[-1], 0.0))


def _pair_moves(stats, coefficients, fit, drops):
    """Starts that remove one segment, `drop`, and replace another, `split`, by two, for every
    ordered pair with drop among `drops` (None: remove none, a start with one segment more) and
    split != drop. Three kinds, each a batch (theta (B, K', P), pi (B, K'), sigma (B, K')):
      split  the two halves one standard deviation either side of theta_split along the main
             axis of its stores' coefficients (split-and-merge EM, Ueda et al. 2000; _axis);
      tail   a small segment carved off one tail of `split`: a tenth of its weight, two standard
             deviations out along that axis, either side. An equal split does not reach a segment
             of a few stores at the edge of a large one (a maximum 0.008 above the other on a
             500-store panel);
      noise  with sigma per segment, the same theta twice with sigma x 0.5 and x 1.5: segments can
             differ in noise rather than in coefficients (a quiet group of stores), which
             k-means++ on the stores' coefficients and coefficient splits cannot see.
    Splits and tails only where the segment has an axis; noise only where it has weight."""
    K, P = fit.theta.shape
    axes = [_axis(stats, coefficients, fit, c) for c in range(K)]
    pairs = [(drop, split) for drop in drops for split in range(K) if split != drop]
    keep = np.array([[c for c in range(K) if c not in pair] for pair in pairs], dtype=int).reshape(len(pairs), -1)
    split = np.array([pair[1] for pair in pairs], dtype=int)
    has_axis = np.array([axes[c] is not None for c in split], dtype=bool)
    axis = np.array([axes[c] if axes[c] is not None else np.zeros(P) for c in split]).reshape(-1, P)
    centre, half, sd = fit.theta[split][:, None], fit.pi[split][:, None] / 2, fit.sigma[split][:, None]
    theta_keep, sigma_keep = fit.theta[keep], fit.sigma[keep]
    pi = np.concatenate([fit.pi[keep], half, half], axis=1)
    pi /= pi.sum(axis=1, keepdims=True)
    twice = np.concatenate([sigma_keep, sd, sd], axis=1)
    halves = np.concatenate([theta_keep, centre + axis[:, None], centre - axis[:, None]], axis=1)
    weight = pi[:, -2:-1] + pi[:, -1:]
    small = np.concatenate([pi[:, :-2], 0.9 * weight, 0.1 * weight], axis=1)
    tail_theta = np.stack([np.concatenate([theta_keep, centre, centre + side * 2 * axis[:, None]], axis=1)
                           for side in (1, -1)], axis=1)                   # (pairs, 2 sides, K', P)
    noisy = (fit.pi[split] > 0) & (stats.sigma == "segment")
    return {"split": (halves[has_axis], pi[has_axis], twice[has_axis]),
            "tail": (tail_theta[has_axis].reshape((-1,) + halves.shape[1:]),
                     np.repeat(small[has_axis], 2, axis=0), np.repeat(twice[has_axis], 2, axis=0)),
            "noise": (np.concatenate([theta_keep, centre, centre], axis=1)[noisy], pi[noisy],
                      np.concatenate([sigma_keep, sd * 0.5, sd * 1.5], axis=1)[noisy])}


def _misfits(stats, coefficients, fit, pool=20, iterations=10):
    """How badly fit explains each store, two ways, for _new_at_outliers: distance (N, K) =
    (b_i - theta_c)' X_i'X_i (b_i - theta_c) / sigma_c^2, how far store i's own coefficients b_i
    lie from segment c's; and `quiet`, stores ranked by what a new segment at their b_i, with the
    smallest sigma of fit, would add to the log-likelihood (greedy EM's criterion, Vlassis &
    Likas 2002): sum_j log(1 - a + a f_j(b_i) / p_j), p_j the fit's density of store j, with the
    weight a that maximises it (a few EM steps on a alone). It rewards a tight group of stores
    inside a noisy segment (the best maximum of a 3000-store panel, with sigma per segment,
    that 4 seeds of 40 missed without it), which lie near that segment in distance. It is
    computed for the `pool` stores that the new segment explains best on their own, among those
    with more weeks than coefficients (fewer: b_i fits them exactly)."""
    N = len(coefficients)
    distance = _distances(stats, coefficients, fit.theta) / fit.sigma ** 2
    log_joint = _log_density(stats, fit.theta, fit.sigma, fit.pi)              # (K, N)
    top = log_joint.max(axis=0)
    log_p = top + np.log(np.exp(log_joint - top).sum(axis=0))
    sigma = fit.sigma[fit.pi > 0].min()
    own = np.maximum(stats.yty - (coefficients * stats.Xty).sum(axis=1), 0.0)   # R_i at b_i
    alone = stats.const - stats.m * math.log(sigma) - own / (2 * sigma * sigma) - log_p   # log f_i(b_i) / p_i
    alone = np.where(stats.m > stats.P, alone, -np.inf)
    stores = np.argsort(-alone, kind="stable")[:min(pool, int(np.isfinite(alone).sum()))]
    log_new = _log_density(stats, coefficients[stores][:, None], np.full((len(stores), 1), sigma))[:, 0]
    ratio = np.exp(np.minimum(log_new - log_p, 700.0))                          # f_j(b_i) / p_j
    a = np.full((len(stores), 1), 1.0 / N)
    for _ in range(iterations):
        a = (a * ratio / (1 - a + a * ratio)).mean(axis=1, keepdims=True)
    gain = np.log1p(a * (ratio - 1)).sum(axis=1)
    return distance, stores[np.argsort(-gain, kind="stable")]


def _new_at_outliers(coefficients, misfits, fit, drop, how_many=2):
    """Starts that remove segment `drop` and open a segment at a store that the fit explains
    badly (greedy EM, Vlassis & Likas 2002): a store far from every segment can be worth a
    segment of its own, a maximum that splitting existing segments does not reach. The stores:
    the `how_many` farthest from all segments, those farthest from the segments that remain, and
    those where a quiet new segment would gain most (misfits: _misfits). A list of starts."""
    distance, quiet = misfits
    K = fit.theta.shape[0]
    keep = [c for c in range(K) if c != drop]
    farthest = [np.argsort(-distance[:, columns].min(axis=1), kind="stable")[:how_many]
                for columns in (list(range(K)), keep)] + [quiet[:how_many]]
    dropped = fit.sigma[drop] if drop is not None else fit.sigma[np.argmax(fit.pi)]
    starts = []
    for store in dict.fromkeys(np.concatenate(farthest).tolist()):
        pi = np.append(fit.pi[keep], 1.0 / len(coefficients))
        starts.append((np.vstack([fit.theta[keep], coefficients[store]]), pi / pi.sum(),
                       np.append(fit.sigma[keep], dropped)))
    return starts


def _store_moves(stats, fit, how_many=8):
    """Starts that move one store to its second most likely segment: the `how_many` stores
    whose two best segments are closest in log pi_c f_ic. With many weeks a store's posterior is
    0 or 1, so EM cannot move it by itself, and two maxima can differ by one store's segment
    (as on the orange-juice panel); each start is the M-step after such a move. A batch."""
    log_joint = _log_density(stats, fit.theta, fit.sigma).T + np.log(np.maximum(fit.pi, 1e-300))
    order = np.argsort(-log_joint, axis=1, kind="stable")[:, :2]
    best, second = order[:, 0], order[:, 1]
    rows = np.arange(len(best))
    gap = log_joint[rows, best] - log_joint[rows, second]
    stores = np.argsort(gap, kind="stable")[:how_many]
    W = np.repeat(fit.W[None], len(stores), axis=0)
    W[np.arange(len(stores)), stores] = 0.0
    W[np.arange(len(stores)), stores, second[stores]] = 1.0
    return _m_step(stats, W)


def _joined(batches):
    """Batches (theta, pi, sigma) as one, and how many starts each gave."""
    return tuple(np.concatenate(parts) for parts in zip(*batches)), [len(batch[0]) for batch in batches]


def _split_and_merge(stats, coefficients, fit, tol, max_iter, trial_iterations=5, explored=()):
    """Improve a converged fit by moving a segment (split-and-merge EM, Ueda et al. 2000): drop one
    segment and either split another in two, carve a small segment off its tail or, with sigma
    per segment, split another by noise (_pair_moves), or open one at a badly fitted store
    (_new_at_outliers); or move one store to another segment (_store_moves).
    All such starts compete in a _tournament of batched plain EM iterations; the best of its
    converged finalists is kept if the likelihood rose; repeat until no move helps. This is what
    finds the maxima that random starts reach only rarely (README, "Starting values, convergence,
    and the global maximum"). explored: converged fits whose moves were tried already; reaching
    one ends the search, as its moves would be tried again."""
    K = fit.theta.shape[0]
    explored = [done for done in explored if done.converged]
    while K > 1 and not any(_same_point(done, fit.W, fit.loglik) for done in explored):
        misfits = _misfits(stats, coefficients, fit)
        pairs = _pair_moves(stats, coefficients, fit, range(K))
        news = [start for drop in range(K) for start in _new_at_outliers(coefficients, misfits, fit, drop)]
        starts, sizes = _joined([pairs["split"], _stacked(news), _store_moves(stats, fit), pairs["noise"],
                                 pairs["tail"]])
        candidate = _tournament(stats, starts, np.repeat(np.arange(5), sizes), tol, max_iter, trial_iterations,
                                known=([fit] if fit.converged else []) + explored)
        if candidate.loglik <= fit.loglik + tol:
            break
        fit = candidate._replace(n_iter=fit.n_iter + candidate.n_iter)
    return fit


def _tournament(stats, starts, kinds, tol, max_iter, trial_iterations=5, per_kind=2, longer=10, known=()):
    """The best converged run among the starts (a batch), found cheaply: every start gets trial_iterations
    plain EM iterations, together; the `per_kind` best of each kind (and the 4 best overall) get
    `longer` more (after 5 iterations a good move can still rank 7th of 33: N = 3000, T = 8); then
    the best of each kind and the 2 best overall run to convergence. Ranks are taken within each
    kind because a move that hardly changes the fit (moving one store) always looks best early and
    would crowd out the moves that change more. known: converged fits where a run may stop. After
    the first iterations, a start already back at the log-likelihood of one of them (within 1e-6,
    relative) is not among the best of its kind, only perhaps of all: many moves fall back to the
    fit they came from, and they crowded out the moves still climbing below it (on a 1000-store
    panel at K = 6 the ones that lead 1.4 higher)."""
    def chosen(loglik, kinds, each, overall, within=None):
        within = loglik if within is None else within        # what ranks the starts of a kind
        picked = set(np.argsort(-loglik, kind="stable")[:overall].tolist())
        for kind in set(kinds.tolist()):
            mine = np.flatnonzero(kinds == kind)
            picked |= set(mine[np.argsort(-within[mine], kind="stable")[:each]].tolist())
        return sorted(picked)
    theta, pi, sigma, loglik, _ = _plain_em(stats, starts, trial_iterations)
    back = np.zeros(len(loglik), dtype=bool)
    for fit in known:
        back |= np.abs(loglik - fit.loglik) <= 1e-6 * abs(fit.loglik)
    stage = chosen(loglik, kinds, per_kind, 4, within=np.where(back, -np.inf, loglik))
    theta, pi, sigma, loglik, gain = _plain_em(stats, (theta[stage], pi[stage], sigma[stage]), longer)
    return max((_run_em(stats, theta[j], pi[j], sigma[j], tol=tol, max_iter=max_iter, known=known, gain=gain[j])
                for j in chosen(loglik, kinds[stage], 1, 2)), key=lambda run: run.loglik)


def _best_of(stats, starts, tol, max_iter, trial_iterations=5, keep=2):
    """A few plain EM iterations from every start of the batch, together; the `keep` most
    promising run to convergence; the best of them."""
    theta, pi, sigma, loglik, gain = _plain_em(stats, starts, trial_iterations)
    return max((_run_em(stats, theta[j], pi[j], sigma[j], tol=tol, max_iter=max_iter, gain=gain[j])
                for j in np.argsort(-loglik)[:keep]), key=lambda run: run.loglik)


def _grow(stats, coefficients, fit, tol, max_iter):
    """The best fit with one segment more, from starts that keep every segment of `fit` and add
    one: each segment split in two, or a small segment at each of the stores fit explains worst.
    Never below fit: where nothing is better, fit with an empty segment (the same likelihood)."""
    pairs = _pair_moves(stats, coefficients, fit, [None])
    outliers = _new_at_outliers(coefficients, _misfits(stats, coefficients, fit), fit, None, how_many=4)
    starts, _ = _joined([pairs["split"], _stacked(outliers), pairs["noise"]])
    grown = _best_of(stats, starts, tol, max_iter, keep=3)
    return grown if grown.loglik >= fit.loglik else _embedded(stats, fit)


def _embedded(stats, fit):
    """fit as a fit with one segment more, an empty one (pi = 0, the pooled theta and sigma)."""
    return fit._replace(theta=np.vstack([fit.theta, _pooled_theta(stats)]), pi=np.append(fit.pi, 0.0),
                        sigma=np.append(fit.sigma, _fixed_sigma(stats, 1)),
                        W=np.column_stack([fit.W, np.zeros(len(fit.W))]))


def _canonical(stats, fit):
    """Segments in canonical order: increasing price coefficient (the price elasticity: most
    price-sensitive first), ties broken by the other columns of X in turn."""
    others = [j for j in range(stats.P) if j != stats.price]
    order = np.lexsort(fit.theta[:, others[::-1] + [stats.price]].T)
    return fit._replace(theta=fit.theta[order], pi=fit.pi[order], sigma=fit.sigma[order], W=fit.W[:, order])


# ---------------------------------------------------------------------------------------------
# Checking arguments
# ---------------------------------------------------------------------------------------------

def _check_K(K, N, where=None):
    """K must be a whole number from 1 to N/2: a segment of fewer than two stores on average
    cannot be told from a store's own fit, and the search for such K is hopeless."""
    where = where or f"the {N} stores in y"
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        raise ValueError(f"K must be a whole number of segments; got {K!r}")
    if K < 1:
        raise ValueError(f"K must be at least 1; got K = {K}")
    if K > N:
        raise ValueError(f"K = {K} segments is more than {where}")
    if K > 1 and K > N // 2:
        raise ValueError(f"K = {K} segments for {where}: at most K = {max(N // 2, 1)} (two stores a "
                         "segment on average); more cannot be told apart from each store's own fit")


def _check_settings(tol, max_iter):
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating)) and tol > 0):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a whole number >= 1; got {max_iter!r}")


def _check_parameters(stats, theta, pi, sigma):
    """pi as a (K,) probability vector, theta as a (K, P) array and sigma as (K,) positive values
    (one value is every segment's), or ValueError."""
    P = stats.P
    pi = np.asarray(pi, dtype=float).ravel()
    if pi.size == 0 or not np.all(np.isfinite(pi)) or (pi < 0).any() or abs(pi.sum() - 1) > 1e-8:
        raise ValueError(f"pi must be a probability vector (entries >= 0 summing to 1); got {pi}")
    K = pi.size
    theta = np.asarray(theta, dtype=float)
    if theta.size != K * P or theta.ndim not in (1, 2) or (theta.ndim == 2 and theta.shape != (K, P)):
        extra = " (with store effects, X's intercept column is dropped)" if stats.store_effects else ""
        raise ValueError(f"theta has shape {theta.shape}; with K = {K} segments (the length of pi) "
                         f"and P = {P} coefficients{extra} it must have K*P = {K * P} entries, flat or K x P")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta has a missing or infinite entry")
    if isinstance(sigma, str):
        raise ValueError(f"sigma must be given as numbers here (one, or one per segment); got {sigma!r}")
    sigma = np.asarray(sigma, dtype=float).ravel()
    if sigma.size not in (1, K) or not np.all(np.isfinite(sigma)) or (sigma <= 0).any():
        raise ValueError(f"sigma must be one positive number or K = {K} of them; got {sigma}")
    return theta.reshape(K, P), pi, np.broadcast_to(sigma, (K,)).copy()


def _given(y, X, theta, pi, sigma, store_effects):
    """Stats and checked (theta, pi, sigma) for parameters given by the caller: with K different
    sigma values the kernel must treat them as one per segment."""
    stats = sufficient_statistics(y, X, store_effects=store_effects)
    params = _check_parameters(stats, theta, pi, sigma)
    if np.ptp(params[2]) > 0:
        stats = stats._replace(sigma="segment")
    return stats, params


def _check_W(W, N):
    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != N or W.shape[1] < 1:
        raise ValueError(f"W must be N x K with N = {N} stores (the columns of y); got shape {W.shape}")
    if not np.all(np.isfinite(W)) or (W < 0).any() or (W > 1).any():
        raise ValueError("W must hold probabilities between 0 and 1")
    bad = np.abs(W.sum(axis=1) - 1) > 1e-6
    if bad.any():
        raise ValueError(f"each row of W must sum to 1; row {int(np.argmax(bad))} sums to "
                         f"{W[np.argmax(bad)].sum():.6g}")
    return W


# ---------------------------------------------------------------------------------------------
# The assignment's five functions
# ---------------------------------------------------------------------------------------------
# Options, as keyword arguments of each: sigma (a number: fixed at it, the default 1; "common" or
# "segment": estimated; LogL, EStep and StandardErrors take the values, one or one per segment)
# and store_effects (each store its own intercept, by the within-store likelihood).

def LogL(theta, pi, y, X, sigma=1.0, store_effects=False):
    """Observed-data log-likelihood sum_i log sum_c pi_c f(y_i | theta_c, sigma_c) (a float).

    theta: K*P values, flat (alpha_1, beta_1, ...) or K x P; pi: (K,); y: (T, N) with NaN for
    unobserved weeks; X: (T, P) or (T, N, P); sigma: one value or K values. With store effects
    theta holds the slopes only and this is the within-store likelihood (README)."""
    stats, params = _given(y, X, theta, pi, sigma, store_effects)
    return _e_step(stats, *params)[1]


def EStep(theta, pi, y, X, sigma=1.0, store_effects=False):
    """(N, K) matrix W of posterior probabilities W[i, c] = Pr[C_i = c | y_i, X, theta, pi, sigma]."""
    stats, params = _given(y, X, theta, pi, sigma, store_effects)
    return _e_step(stats, *params)[0]


def MStep(y, X, W, sigma=1.0, store_effects=False):
    """(theta (K, P), pi (K,)) maximising the expected complete-data log-likelihood given the
    (N, K) segment probabilities W: K weighted least-squares fits and pi_c = mean_i W[i, c].
    With sigma "common" or "segment", (theta, pi, sigma (K,)). A segment with no weight gets
    pi_c = 0 and the pooled least-squares theta (and sigma)."""
    stats = sufficient_statistics(y, X, sigma, store_effects)
    theta, pi, sigma = _m_step(stats, _check_W(W, stats.n.size))
    return (theta, pi, sigma) if stats.estimates_sigma else (theta, pi)


def _warn_about(fit, what):
    if not fit.converged:
        _warn(f"{what} reached max_iter = {fit.n_iter} iterations before converging; "
              "the estimate may be short of the maximum", ConvergenceWarning)
    if fit.pi.min() == 0:
        _warn(f"{what} ended with an empty segment (pi_c = 0): the data support fewer "
              "segments from this start", RuntimeWarning)


def _returned(stats, fit):
    if stats.estimates_sigma:
        return fit.theta, fit.pi, fit.sigma, fit.loglik
    return fit.theta, fit.pi, fit.loglik


def EM(K, y, X, tol=1e-8, max_iter=10000, seed=None, accelerate=True, sigma=1.0, store_effects=False):
    """One EM run from a k-means++ start drawn with `seed`: (theta (K, P), pi (K,), loglik), or
    (theta, pi, sigma (K,), loglik) with sigma "common" or "segment".

    Converged when no posterior probability moves by more than tol, the log-likelihood rises by
    less than tol and a Newton step would add less than tol. accelerate=True (the default) takes
    Newton steps where the log-likelihood is locally concave and SQUAREM steps elsewhere, both only
    when they raise the likelihood; accelerate=False is plain EM. Segments in canonical order."""
    stats = sufficient_statistics(y, X, sigma, store_effects)
    _check_K(K, stats.n.size)
    _check_settings(tol, max_iter)
    rng = _random(seed)
    start = [part[0] for part in _kmeanspp_starts(stats, _store_coefficients(stats), K, rng, 1)]
    fit = _run_em(stats, *start, tol=tol, max_iter=max_iter, accelerate=accelerate)
    fit = _canonical(stats, _polish(stats, fit) if accelerate else fit)
    _warn_about(fit, "EM")
    return _returned(stats, fit)


def _random(seed):
    """The starts' own random generator (never the global state): Python's, as numpy.random
    would add 10 ms to every start-up of the program."""
    import random
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed must be None or a whole number >= 0; got {seed!r}")
    return random.Random(None if seed is None else int(seed))


def fit_stats(stats, K, n_init=10, seed=None, tol=1e-8, max_iter=10000, progress=None, previous=None):
    """Estimate's work on a panel's Stats (see sufficient_statistics), returning the whole Fit:
    theta, pi, sigma, loglik, W, n_iter, converged. progress(done), if given, is called after
    each start's run. previous: a Fit of the same panel with fewer segments (a sweep's last K);
    where the fresh search ends below it, it is grown to K segments (_grow), so that the
    log-likelihood never falls as K grows."""
    _check_K(K, stats.n.size)
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or not 1 <= n_init <= MAX_STARTS:
        raise ValueError(f"n_init must be a whole number from 1 to {MAX_STARTS:,}; got {n_init!r}")
    _check_settings(tol, max_iter)
    rng = _random(seed)
    if K == 1:                             # one maximum (pooled least squares): one run finds it
        start = _pooled_theta(stats)[None], np.ones(1), _fixed_sigma(stats, 1)
        return _canonical(stats, _polish(stats, _run_em(stats, *start, tol=tol, max_iter=max_iter)))
    coefficients = _store_coefficients(stats)
    starts = _kmeanspp_starts(stats, coefficients, K, rng, n_init)
    # the runs' first, plain iterations together (far from a maximum they need no acceleration)
    warm_up = min(WARM_UP if n_init * K * len(stats.n) <= BATCH_LARGE else WARM_UP_LARGE, max_iter - 1)
    theta, pi, sigma, _, gain = _plain_em(stats, starts, warm_up)
    runs = []
    for j in range(n_init):
        runs.append(_run_em(stats, theta[j], pi[j], sigma[j], tol=tol, max_iter=max_iter - warm_up,
                            known=[run for run in runs if run.converged], gain=gain[j]))
        if progress:
            progress(j + 1)
    runs = [run._replace(n_iter=run.n_iter + warm_up) for run in runs]
    best = max(runs, key=lambda run: run.loglik)
    if previous is not None and previous.theta.shape[0] < K and best.loglik < previous.loglik:
        grown = previous                         # the fresh search ended below the last K: grow it
        while grown.theta.shape[0] < K:
            grown = _grow(stats, coefficients, grown, tol, max_iter)
        best = max(best, grown, key=lambda run: run.loglik)
    second = [run for run in runs if best.loglik - NEAR_TIE <= run.loglik < best.loglik - 1e-6]
    best = _split_and_merge(stats, coefficients, best, tol, max_iter)
    if second:                                   # a near tie: moves from the other maximum too
        other = _split_and_merge(stats, coefficients, max(second, key=lambda run: run.loglik), tol, max_iter,
                                 explored=[best])
        best = max(best, other, key=lambda run: run.loglik)
    fit = _canonical(stats, _polish(stats, best))
    _warn_about(fit, "Estimate")
    return fit


def fit_mixture(K, y, X, n_init=10, seed=None, tol=1e-8, max_iter=10000, sigma=1.0, store_effects=False):
    """Estimate's work, returning the whole Fit: theta, pi, sigma, loglik, W, n_iter, converged."""
    return fit_stats(sufficient_statistics(y, X, sigma, store_effects), K, n_init, seed, tol, max_iter)


def Estimate(K, y, X, n_init=10, seed=None, tol=1e-8, max_iter=10000, sigma=1.0, store_effects=False):
    """Best of n_init EM runs from different k-means++ starts, improved by split-and-merge moves:
    (theta (K, P), pi (K,), loglik) at the highest log-likelihood found, or (theta, pi,
    sigma (K,), loglik) with sigma "common" or "segment". Same seed, same result."""
    stats = sufficient_statistics(y, X, sigma, store_effects)
    return _returned(stats, fit_stats(stats, K, n_init, seed, tol, max_iter))


# ---------------------------------------------------------------------------------------------
# Standard errors
# ---------------------------------------------------------------------------------------------

def _covariance(stats, theta, pi, sigma):
    """Covariance (K P + n_tau + K)^2 of (theta flat, sigma (n_tau of them), pi_1..pi_K) from the
    observed information.

    The inverse of -H in psi = (theta, log sigma, eta), carried to sigma and pi by the delta
    method: d sigma / d tau = sigma, d pi_c / d eta_d = pi_c (1[c = d] - pi_d), d < K. All NaN
    where -H is not positive definite (not a maximum, or an empty segment) or is flat (a
    curvature below FLAT times the largest: over-fitted, two equal segments), because no standard
    error is meaningful there.
    """
    K, P = theta.shape
    KP, nt = K * P, _n_tau(stats, K)
    size = KP + nt + K
    if pi.min() <= 0:
        return np.full((size, size), np.nan)
    W, _ = _e_step(stats, theta, pi, sigma)
    _, H = _score_hessian(stats, theta, pi, sigma, W)
    values = np.linalg.eigvalsh(-H)
    if not values.min() > FLAT * values.max():  # not a maximum, or a flat one (over-fitted)
        return np.full((size, size), np.nan)
    cov_psi = np.linalg.solve(-H, np.eye(H.shape[0]))
    J = np.zeros((size, H.shape[0]))
    J[:KP, :KP] = np.eye(KP)
    J[KP:KP + nt, KP:KP + nt] = np.diag(sigma[:nt])
    J[KP + nt:, KP + nt:] = (np.diag(pi) - np.outer(pi, pi))[:, :K - 1]
    return J @ cov_psi @ J.T


def _standard_errors(stats, theta, pi, sigma):
    """(se theta (K, P), se pi (K,), se sigma (K,): NaN where sigma is fixed)."""
    K, P = theta.shape
    KP, nt = K * P, _n_tau(stats, K)
    se = np.sqrt(np.diag(_covariance(stats, theta, pi, sigma)))
    se_sigma = np.full(K, np.nan) if nt == 0 else np.broadcast_to(se[KP:KP + nt], (K,)).copy()
    return se[:KP].reshape(K, P), se[KP + nt:], se_sigma


def StandardErrors(theta, pi, y, X, sigma=1.0, store_effects=False, sigma_estimated=False):
    """Standard errors (se_theta (K, P), se_pi (K,)) at a maximum (theta, pi, sigma), from the
    observed information; NaN where the information is singular (an empty or duplicated segment).
    sigma_estimated: False (sigma fixed at the value given), "common" or "segment" (sigma is that
    estimate; True: "common" if the values are all equal, else "segment"); then
    (se_theta, se_pi, se_sigma (K,)) is returned."""
    values = np.asarray(sigma, dtype=float).ravel() if not isinstance(sigma, str) else sigma
    if sigma_estimated is True:
        sigma_estimated = "common" if np.ptp(values) == 0 else "segment"
    if sigma_estimated not in (False,) + SIGMA_MODES:
        raise ValueError(f"sigma_estimated must be False, True, 'common' or 'segment'; got {sigma_estimated!r}")
    if not sigma_estimated and not isinstance(values, str) and values.size > 1 and np.ptp(values) > 0:
        raise ValueError("with sigma fixed (sigma_estimated=False) give one value of sigma")
    stats = sufficient_statistics(y, X, sigma_estimated or 1.0, store_effects)
    theta, pi, sigma = _check_parameters(stats, theta, pi, sigma)
    se_theta, se_pi, se_sigma = _standard_errors(stats, theta, pi, sigma)
    return (se_theta, se_pi, se_sigma) if sigma_estimated else (se_theta, se_pi)


# ---------------------------------------------------------------------------------------------
# Reading a panel from a CSV file
# ---------------------------------------------------------------------------------------------

MISSING = ("", "NA", "NaN", "nan")            # cells that mean "no observation this week"


class InputError(ValueError):
    """A file that cannot be used, with a message naming the file, where and what."""


MAX_BYTES = 2 ** 31      # 2 GiB: a larger (or endless) file is refused, not read into memory


def _read_text(path):
    """The file's text (UTF-8 with or without a byte-order mark, else Windows-1252). Refused: a
    folder, a binary file (seen in its first megabyte), a file over MAX_BYTES (or endless)."""
    import re
    try:
        with open(path, "rb") as handle:
            raw = handle.read(1 << 20)
            if b"\0" not in raw:
                raw += handle.read(MAX_BYTES + 1 - len(raw))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a CSV file") from None
    except OSError as problem:
        raise InputError(f"{path}: cannot be read ({problem.strerror})") from None
    except MemoryError:
        raise InputError(f"{path}: too large to read into memory") from None
    if len(raw) > MAX_BYTES:
        raise InputError(f"{path}: larger than {MAX_BYTES >> 30} GB (or endless): not read")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        text = "\0"
    if re.search("[\x00-\x08\x0b\x0e-\x1f]", text):
        raise InputError(f"{path}: is not a text file (binary or unreadable content); "
                         "expected a CSV file of prices and sales")
    return text


def _shown(cell, width=40):
    """A cell as a message shows it: at most `width` characters."""
    cell = cell.strip()
    return cell if len(cell) <= width else f"{cell[:width]}... ({len(cell):,} characters)"


def _kept(lines, first=0):
    """Numbers (from 1) of the lines that are not blank, from line `first` on."""
    return [number for number, line in enumerate(lines[first:], first + 1) if line.strip(" \t,;")]


def _cells(line, sep):
    """The cells of one line: quotes respected, spaces and tabs after a separator skipped."""
    import csv
    import re
    line = re.sub(f"(?<={re.escape(sep)})[ \t]+", "", line)
    return next(csv.reader([line], delimiter=sep, skipinitialspace=True), [""])


def _header(path, text):
    """(lines, number of the header line, separator, header cells) of a CSV text.
    The header line is the first that is not blank; the separator (',' ';' or tab) is the one
    that splits it into the most cells, quotes respected (',' first on a tie). A header of
    numbers only is data, not a header: refused."""
    import csv

    csv.field_size_limit(MAX_BYTES)                      # a huge cell is a bad cell, not a crash
    lines = text.splitlines()
    first = next((number for number, line in enumerate(lines, 1) if line.strip(" \t,;")), None)
    if first is None:
        raise InputError(f"{path}: the file is empty")
    header_line = lines[first - 1]
    sep = max((",", ";", "\t"), key=lambda candidate: len(_cells(header_line, candidate)))
    header = [name.strip() for name in _cells(header_line, sep)]
    while len(header) > 1 and header[-1] == "":          # trailing separators of a spreadsheet
        header.pop()
    if all(_number_or_none(name) is not None for name in header):
        raise InputError(f"{path}: line {first} is numbers, not a header: the first line must name the "
                         "columns (the price, then one name a store; or store, week, sales, price)")
    return lines, first, sep, header


def _number_or_none(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def read_panel(path):
    """Read a CSV panel: first column the price, every other column a store, one row a week.

    Separators ',' ';' or tab (taken from the header line); with ';' or tab, decimal commas are
    read too (a spreadsheet export). An empty cell (or NA, NaN) is a week without an observation.
    A byte-order mark, spaces around cells, empty lines and trailing empty columns are ignored.
    Returns (price (T,), sales (T, N) with NaN where missing, store names); raises InputError
    naming the file, line and column of the first problem.
    """
    import csv

    lines, first, sep, header = _header(path, _read_text(path))
    kept = _kept(lines, first - 1)
    width = len(header)
    for number in kept:                                  # else csv would join the lines that follow
        _check_quotes(path, lines[number - 1], number, sep)
    body = (_after_separators(lines[number - 1], sep) for number in kept[1:])
    if sep != ",":                                       # decimal commas: 2,39 is 2.39
        body = (line.replace(",", ".") for line in body)
    values = np.full((len(kept) - 1, width), np.nan)
    for row, cells in enumerate(csv.reader(body, delimiter=sep, skipinitialspace=True)):
        while len(cells) > width and cells[-1].strip() == "":
            cells.pop()
        if len(cells) != width:
            hint = (" (a decimal comma? In a comma-separated file 3,37 is two cells: write 3.37, or "
                    "separate the cells with ';')" if sep == "," and len(cells) > width else "")
            raise InputError(f"{path}: line {kept[row + 1]} has {len(cells)} cells, "
                             f"{'more' if len(cells) > width else 'fewer'} than the header's {width}{hint}")
        try:                                             # the fast way, right for most rows
            values[row] = np.array([cell or "nan" for cell in cells], dtype=float)
        except ValueError:
            line = kept[row + 1]
            as_written = _cells(lines[line - 1], sep)
            values[row] = _cells_one_by_one(path, cells, as_written, header, line, sep)
    return _checked_panel(path, values, header, kept[1:])


def _after_separators(line, sep):
    """The line with spaces and tabs after each separator removed (so that a quoted cell after
    ', ' or ',\t' is read as quoted)."""
    if "\t" in line and sep != "\t" or '"' in line:
        import re
        return re.sub(f"(?<={re.escape(sep)})[ \t]+", "", line)
    return line


def _check_quotes(path, line, number, sep):
    """InputError for a quote that opens a cell and never closes, or one that closes in the middle
    of a cell ("2"39, which csv would read as 239)."""
    if '"' not in line:
        return
    if line.count('"') % 2:
        raise InputError(f"{path}: line {number}: a quote (\") opens a cell that never closes")
    inside, previous = False, sep
    for j, char in enumerate(line):
        if char == '"':
            if not inside and previous.strip() and previous != sep:
                raise InputError(f"{path}: line {number}: a quote (\") in the middle of a cell")
            if inside and j + 1 < len(line) and line[j + 1] == '"':
                continue                                 # "" inside quotes is a quote
            inside = not inside
            if not inside and j + 1 < len(line) and line[j + 1] not in (sep, " ", "\t", '"'):
                raise InputError(f"{path}: line {number}: a quote (\") closes in the middle of a cell "
                                 f"(near '{_shown(line[max(0, j - 10):j + 10])}')")
        previous = char if char not in " \t" or inside else previous


def _cells_one_by_one(path, cells, as_written, header, line, sep=","):
    """A row's numbers with MISSING cells as NaN, or InputError naming the first bad cell as it
    is written in the file."""
    import re
    numbers = []
    for j, cell in enumerate(cells):
        cell = cell.strip()
        try:
            numbers.append(np.nan if cell in MISSING else float(cell))
        except ValueError:
            shown = as_written[j].strip() if j < len(as_written) else cell
            hint = ""
            if j == 0 and re.fullmatch(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", shown):
                hint = ": a date? The first column must be the price"
            elif sep == "," and re.fullmatch(r"-?\d+,\d+", shown):
                hint = ": a decimal comma? In a comma-separated file write 3.37, or separate the cells with ';'"
            raise InputError(f"{path}: line {line}, column '{header[j] or j + 1}': '{_shown(shown)}' is not "
                             f"a number{hint}") from None
    return numbers


def _checked_panel(path, values, names, line_of_row):
    T = values.shape[0]
    if T == 0:
        raise InputError(f"{path}: has a header but no data rows")
    if values.shape[1] < 2:
        raise InputError(f"{path}: has only one column (the price): no store columns")
    names = [name or f"column {j + 1}" for j, name in enumerate(names)]
    price, sales = values[:, 0], values[:, 1:]
    price_name = names[0]
    _check_first_column(path, price, names[0])
    for t in range(T):
        if np.isnan(price[t]):
            raise InputError(f"{path}: line {line_of_row[t]}: the price ('{price_name}') is missing")
        if np.isinf(price[t]):
            raise InputError(f"{path}: line {line_of_row[t]}: the price ('{price_name}') is infinite "
                             "(a number too large)")
        if price[t] <= 0:
            raise InputError(f"{path}: line {line_of_row[t]}: the price ('{price_name}') must be "
                             f"positive to take its log; got {price[t]:g}")
    if T < 2:
        raise InputError(f"{path}: has {T} week; at least 2 weeks are needed for the 2 coefficients "
                         "(alpha, beta) of a segment")
    if np.ptp(price) == 0:
        raise InputError(f"{path}: the price ('{price_name}') is {price[0]:g} in every week; "
                         "a price that never changes cannot identify a price effect")
    bad = np.argwhere(sales <= 0)
    if len(bad):
        t, i = bad[0]
        raise InputError(f"{path}: line {line_of_row[t]}, column '{names[i + 1]}': sales must be "
                         f"positive to take logs; got {sales[t, i]:g}")
    if np.isinf(sales).any():
        t, i = np.argwhere(np.isinf(sales))[0]
        raise InputError(f"{path}: line {line_of_row[t]}, column '{names[i + 1]}': infinite sales")
    empty = np.isnan(sales).all(axis=0)
    if empty.any():
        raise InputError(f"{path}: column '{names[1 + int(np.argmax(empty))]}' has no observed week "
                         "(every cell is empty)")
    return price, sales, names[1:]


INDEX_NAMES = ("week", "weeks", "wk", "date", "day", "time", "period", "t", "index", "id", "row",
               "unnamed: 0", "month", "year")


def _check_first_column(path, price, name):
    """InputError where the first column is not a price: named like a week, date or index, or
    holding the integers 1..T or 0..T-1 in order (week numbers, or a pandas index)."""
    T = len(price)
    counting = T > 2 and (np.array_equal(price, np.arange(1, T + 1)) or np.array_equal(price, np.arange(T)))
    if name.strip().lower() in INDEX_NAMES or counting:
        what = f"'{name}'" if name else "it"
        looks = (f"holds the numbers {int(price[0])} to {int(price[-1])} in order (week numbers or an index)"
                 if counting else "is named like a week, date or index")
        raise InputError(f"{path}: the first column must be the price; {what} {looks}. Put the price "
                         "first, then one column a store; or give a long file (one row a store and week "
                         "with columns store, week, sales, price)")


def panel_arrays(price, sales):
    """The model's y = log sales (T, N) and X = [1, log price] (T, 2)."""
    return np.log(sales), np.column_stack([np.ones_like(price), np.log(price)])


# ---------------------------------------------------------------------------------------------
# Reading a long file: one row a store and week
# ---------------------------------------------------------------------------------------------

LONG_COLUMNS = ("store", "week", "sales", "price")


class LongPanel(NamedTuple):
    """A long file's rows. stores: names, in order of first appearance; store (R,): each row's
    store as an index into stores; weeks: the number of distinct weeks; sales, price (R,);
    x (R, q): further regressors, named x_names."""
    stores: list
    store: np.ndarray
    weeks: int
    sales: np.ndarray
    price: np.ndarray
    x: np.ndarray
    x_names: list


class _Locate(Exception):
    """The fast reader met something it cannot name a line for: read again, the exact way."""


def is_long(header, named=None):
    """True for a long file: a column called store (any case), or a column named by a flag."""
    return "store" in [name.lower() for name in header] or any((named or {}).values())


def _long_columns(path, header, named, x):
    """{role: column index} for store, week, sales, price (by `named` or by header, any case) and
    [column index] for the further regressors x."""
    lower = [name.lower() for name in header]

    def find(name, flag):
        if name in header:
            return header.index(name)
        if name.lower() in lower:
            return lower.index(name.lower())
        raise InputError(f"{path}: no column '{name}' in the header{flag}; the header has: "
                         + ", ".join(header))

    where = {role: find(named.get(role) or role,
                        f" (named by --{role})" if named.get(role) else f"; name the {role} column with --{role} COL")
             for role in LONG_COLUMNS}
    extra = [find(name, " (named by --x)") for name in x]
    used = list(where.values()) + extra
    for j in used:
        if used.count(j) > 1:
            raise InputError(f"{path}: column '{header[j]}' is used twice (as "
                             + " and ".join(role for role, k in where.items() if k == j) + " / --x)")
    return where, extra


def _identifiers(values):
    """(codes (R,), names) for a column of store or week labels, in order of first appearance."""
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = unique[order]
    if labels.dtype.kind == "f":
        labels = [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in labels]
    return rank[inverse.ravel()], [str(label) for label in labels]


def _long_fast(lines, first, sep, where, extra):
    """The rows by numpy's parser (fast), as (labels (R, 2) of store and week, numbers (R, 2 + q):
    sales, price, x; line of each row, or None where skipped blank lines make it unknown);
    None where numpy cannot read them."""
    body = lines[first:]
    if sep != ",":                                       # decimal commas: 2,39 is 2.39
        body = [line.replace(",", ".") for line in body]
    numbers = [where["sales"], where["price"]] + extra
    ids = [where["store"], where["week"]]
    read = dict(delimiter=sep, quotechar='"', ndmin=2, comments=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:                                         # numbered stores and weeks: one pass
                values = np.loadtxt(body, usecols=ids + numbers, dtype=float, **read)
                labels, values = values[:, :2], values[:, 2:]
            except ValueError:
                values = np.loadtxt(body, usecols=numbers, dtype=float, **read)
                labels = np.char.strip(np.loadtxt(body, usecols=ids, dtype=str, **read))
    except ValueError:
        return None
    return labels, values, (first + 1 + np.arange(len(values)) if len(values) == len(body) else None)


def _long_exact(path, lines, first, sep, header, where, extra):
    """The rows by the csv module, cell by cell, naming the line and column of a bad cell."""
    import csv

    kept = _kept(lines, first - 1)
    numbers = [where["sales"], where["price"]] + extra
    ids = [where["store"], where["week"]]
    need = max(numbers + ids) + 1
    values = np.empty((len(kept) - 1, len(numbers)))
    labels = []
    body = (lines[number - 1] for number in kept[1:])
    if sep != ",":
        body = (line.replace(",", ".") for line in body)
    for row, cells in enumerate(csv.reader(body, delimiter=sep, skipinitialspace=True)):
        line = kept[row + 1]
        if len(cells) < need:
            raise InputError(f"{path}: line {line} has {len(cells)} cells; column '{header[need - 1]}' "
                             f"is cell {need}")
        labels.append([cells[j].strip() for j in ids])
        for k, j in enumerate(numbers):
            cell = cells[j].strip()
            try:
                values[row, k] = np.nan if cell in MISSING else float(cell)
            except ValueError:
                raise InputError(f"{path}: line {line}, column '{header[j]}': '{cell}' is not a number") from None
    return np.array(labels, dtype=str).reshape(-1, 2), values, np.array(kept[1:])


def _checked_long(path, header, where, extra, labels, values, line_of_row):
    """LongPanel from the parsed rows, or InputError naming the first problem's line and column
    (_Locate where the line is not known)."""
    names = [header[j] for j in [where["sales"], where["price"]] + extra]

    def fail(row, message):
        if line_of_row is None:
            raise _Locate
        raise InputError(f"{path}: line {line_of_row[row]}, {message}")

    if len(values) == 0:
        raise InputError(f"{path}: has a header but no data rows")
    for k, name in enumerate(names):
        column = values[:, k]
        bad = ~np.isfinite(column) | ((column <= 0) if k < 2 else False)
        if bad.any():
            row = int(np.argmax(bad))
            what = ("is empty: every row needs sales, a price and its regressors (leave out a "
                    "week without an observation)" if np.isnan(column[row]) else
                    f"must be positive to take its log; got {column[row]:g}" if np.isfinite(column[row])
                    else "is infinite")
            fail(row, f"column '{name}': {what}")
    for k, role in enumerate(("store", "week")):
        empty = labels[:, k] == "" if labels.dtype.kind == "U" else np.isnan(labels[:, k])
        if empty.any():
            fail(int(np.argmax(empty)), f"column '{header[where[role]]}': the {role} is missing")
    store, stores = _identifiers(labels[:, 0])
    week, weeks = _identifiers(labels[:, 1])
    key = store * len(weeks) + week
    order = np.argsort(key, kind="stable")
    repeated = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(repeated):
        row, earlier = order[repeated[0] + 1], order[repeated[0]]
        where_before = f"line {line_of_row[earlier]}" if line_of_row is not None else "an earlier line"
        fail(row, f"store '{stores[store[row]]}', week '{weeks[week[row]]}' again (first on {where_before}): "
                  "one row a store and week")
    for k, name in enumerate(names[1:], 1):
        if np.ptp(values[:, k]) == 0:
            raise InputError(f"{path}: column '{name}' is {values[0, k]:g} in every row; a regressor "
                             "that never changes cannot be estimated")
    return LongPanel(stores, store, len(weeks), values[:, 0], values[:, 1], values[:, 2:], names[2:])


def read_long(path, store=None, week=None, sales=None, price=None, x=()):
    """Read a long CSV file: one row a store and week, columns store, week, sales, price (found by
    header, any case, or named by these arguments) and the further regressors named in x.

    Weeks need not be aligned across stores: each store's rows are its observations. The rows
    are parsed by numpy (fast); where anything is off, again by the csv module, which names the
    file, line and column of the first problem (InputError). Returns a LongPanel.
    """
    return _read_long(path, _header(path, _read_text(path)), dict(store=store, week=week, sales=sales, price=price), x)


def _read_long(path, parsed, named, x):
    """read_long on a file's text already split by _header."""
    lines, first, sep, header = parsed
    where, extra = _long_columns(path, header, named, list(x))
    fast = _long_fast(lines, first, sep, where, extra)
    if fast is not None:
        try:
            return _checked_long(path, header, where, extra, *fast)
        except _Locate:
            pass
    return _checked_long(path, header, where, extra, *_long_exact(path, lines, first, sep, header, where, extra))


def long_sums(panel):
    """Sums (grouped by store) of y = log sales and X = [1, log price, x] from a LongPanel."""
    X = np.column_stack([np.ones(len(panel.price)), np.log(panel.price), panel.x])
    return _grouped_sums(panel.store, np.log(panel.sales), X, len(panel.stores))


class Loaded(NamedTuple):
    """A file reduced to what the models need: store names, weeks, per-store Sums, the names of
    X's columns, its layout ("wide" or "long") and the range of log price (for the picture)."""
    stores: list
    weeks: int
    sums: Sums
    coefficients: list
    layout: str
    price_range: tuple = (0.0, 0.0)


def load(path, columns=None, x=()):
    """Read a wide or a long CSV file (a long one has a 'store' column, or columns named by
    `columns`, a dict with keys store, week, sales, price) into a Loaded. x: further regressors
    of a long file. X = [1, log price, x]; y = log sales."""
    columns = {role: name for role, name in (columns or {}).items() if name}
    parsed = _header(path, _read_text(path))
    if is_long(parsed[3], columns):
        panel = _read_long(path, parsed, columns, x)
        return Loaded(panel.stores, panel.weeks, long_sums(panel), ["intercept", "log price"] + panel.x_names,
                      "long", (float(np.log(panel.price.min())), float(np.log(panel.price.max()))))
    if x:
        raise InputError(f"{path}: --x needs a long file (one row a store and week, with a 'store' column); "
                         "this one is wide (first column the price, a column a store)")
    price, sales, stores = read_panel(path)
    y, X = panel_arrays(price, sales)
    return Loaded(stores, len(price), _wide_sums(y, X), ["intercept", "log price"], "wide",
                  (float(X[:, 1].min()), float(X[:, 1].max())))


# ---------------------------------------------------------------------------------------------
# Model comparison, results.json and the report
# ---------------------------------------------------------------------------------------------

def model_summary(fit, stats, names):
    """Everything results.json says of one fitted model: estimates, standard errors, criteria.
    names: the coefficients' names, one per column of theta.

    n_params = K P + K - 1 (+ 1 for a common sigma, + K for sigma per segment; store effects are
    not counted: the within likelihood is free of them); AIC = 2 k - 2 log L; BIC = k log(observed
    cells) - 2 log L; ICL = BIC + 2 EN with EN = -sum_ic w_ic log w_ic the classification entropy;
    entropy is the normalised 1 - EN / (N log K): 1 when every store's segment is certain (1 too
    for K = 1).
    """
    K, P = fit.theta.shape
    N = fit.W.shape[0]
    se_theta, se_pi, se_sigma = _standard_errors(stats, fit.theta, fit.pi, fit.sigma)
    unsupported = overfitted(fit)
    for c in unsupported:                         # no standard error means anything for these
        se_theta[c], se_pi[c], se_sigma[c] = np.nan, np.nan, np.nan
    k = K * P + K - 1 + _n_tau(stats, K)
    W = fit.W
    classification_entropy = float(-np.sum(W[W > 0] * np.log(W[W > 0])))
    bic = k * math.log(stats.n.sum()) - 2 * fit.loglik
    return {"K": K, "coefficients": list(names), "theta": fit.theta.tolist(), "pi": fit.pi.tolist(),
            "sigma": fit.sigma.tolist(),
            "se": {"theta": se_theta.tolist(), "pi": se_pi.tolist(), "sigma": se_sigma.tolist()},
            "loglik": fit.loglik, "n_params": k, "aic": 2 * k - 2 * fit.loglik, "bic": bic,
            "icl": bic + 2 * classification_entropy,
            "entropy": 1.0 - classification_entropy / (N * math.log(K)) if K > 1 else 1.0,
            "iterations": fit.n_iter, "converged": fit.converged,
            "stores_in_segment": np.bincount(W.argmax(axis=1), minlength=K).tolist(),
            "unsupported": {str(c + 1): why for c, why in sorted(unsupported.items())},
            "supported_K": K - len(unsupported)}


def overfitted(fit):
    """{segment: why} for the segments of a fit that the data do not support: one with (almost) no
    store (less than half a store's posterior weight), or one equal to an earlier segment (theta
    and sigma within 1e-3, relative)."""
    N = len(fit.W)
    why = {}
    for c in range(len(fit.pi)):
        if fit.pi[c] * N < 0.5:
            held = fit.pi[c] * N
            why[c] = "holds no store" if held < 0.005 else f"holds almost no store ({held:.2f} of one store's weight)"
            continue
        for d in range(c):
            if d not in why and np.all(np.abs(fit.theta[c] - fit.theta[d]) <= 1e-3 * (1 + np.abs(fit.theta[d]))) \
                    and abs(fit.sigma[c] - fit.sigma[d]) <= 1e-3 * fit.sigma[d]:
                why[c] = f"is the same as segment {d + 1}"
                break
    return why


def _tidy(value):
    """Floats to 12 significant digits (the same bytes for the same input), NaN to null."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.12g}")
    if isinstance(value, dict):
        return {key: _tidy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tidy(item) for item in value]
    return value


def results_json(results):
    """results as JSON text: one line a store, number lists kept on one line."""
    import json
    import re
    results = _tidy(results)
    stores = results.pop("store_segments")
    text = json.dumps(results, indent=2)
    text = re.sub(r"\[\s*([-+0-9.eE,\s]*|null|true|false)\s*\]",
                  lambda match: "[" + " ".join(match.group(1).split()) + "]", text)
    text = re.sub(r"\[\s*(\[[^\[\]]*\](?:,\s*\[[^\[\]]*\])*)\s*\]",
                  lambda match: "[" + " ".join(match.group(1).split()) + "]", text)
    rows = ",\n    ".join(json.dumps(store) for store in stores)
    return text[:-2] + ',\n  "store_segments": [\n    ' + rows + "\n  ]\n}\n"


def _number(value, width, digits=4):
    """A number for the report's tables; n/a for a missing (None or NaN) standard error."""
    return f"{value:{width}.{digits}f}" if value is not None and math.isfinite(value) else f"{'n/a':>{width}}"


def _describe(settings):
    """One line on the model of a run's settings."""
    sigma = settings.get("sigma", 1.0)
    noise = (f"sigma fixed at {sigma:g}" if not isinstance(sigma, str) else
             "one sigma estimated for all segments" if sigma == "common" else "one sigma estimated per segment")
    effects = "; store fixed effects (within-store likelihood)" if settings.get("store_effects") else ""
    return f"log sales on {', '.join(settings.get('regressors', ['intercept', 'log price']))}; {noise}{effects}"


def _segment_table(model, sigma_estimated):
    """The rows of one model's table: each coefficient, sigma if estimated, pi, each with its s.e."""
    names = model.get("coefficients", ["intercept", "log price"])
    columns = [(name, [row[j] for row in model["theta"]], [row[j] for row in model["se"]["theta"]])
               for j, name in enumerate(names)]
    if sigma_estimated:
        columns.append(("sigma", model["sigma"], model["se"]["sigma"]))
    columns.append(("pi", model["pi"], model["se"]["pi"]))
    widths = [max(10, len(name)) for name, _, _ in columns]
    lines = ["  segment" + "".join(f" {name:>{width}}    (s.e.)" for (name, _, _), width in zip(columns, widths))
             + "   stores"]
    for c in range(model["K"]):
        cells = "".join(f" {_number(values[c], width)} ({_number(errors[c], 7)})"
                        for (_, values, errors), width in zip(columns, widths))
        lines.append(f"  {c + 1:7d}{cells} {model['stores_in_segment'][c]:8d}")
    return lines


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
    return ("very strong" if gap > 10 else "strong" if gap > 6 else "positive" if gap > 2 else "weak")


def report(results):
    """The printed report: what the columns mean, a table of segments for each K, the criteria,
    then the BIC choice and how sure it is. Takes analyse()'s dictionary, or the same read back
    from results.json."""
    settings = results["settings"]
    names = results["models"][0].get("coefficients", ["intercept", "log price"])
    lines = [f"{results['data']}: {results['stores']} stores x {results['weeks']} weeks, "
             f"{results['observations']} observed cells; best of {settings['n_init']} "
             f"starts for each K (seed {settings['seed']})",
             f"model: {_describe(settings)}", ""] + _guide(settings, names) + [""]
    for model in results["models"]:
        status = (f"converged after {model['iterations']} iterations" if model["converged"]
                  else f"NOT converged after {model['iterations']} iterations")
        lines.append(f"K = {model['K']}   log-likelihood {model['loglik']:.4f}   "
                     f"free parameters {model['n_params']}   {status}")
        lines.append(f"        AIC {model['aic']:.2f}   BIC {model['bic']:.2f}   ICL {model['icl']:.2f}   "
                     f"entropy {model['entropy']:.3f}")
        lines += _segment_table(model, isinstance(settings.get("sigma", 1.0), str))
        if model.get("unsupported"):
            lines.append("  ! " + "; ".join(f"segment {c} {why}" for c, why in model["unsupported"].items())
                         + f": the data support at most {model['supported_K']} segments (n/a: no standard "
                         "error means anything there)")
        lines.append("")
    ranked = sorted(results["models"], key=lambda model: model["bic"])
    others = ", ".join(f"K = {model['K']}: +{model['bic'] - ranked[0]['bic']:.2f}" for model in ranked[1:])
    lines.append(f"BIC chooses K = {results['best_K']}: the lowest BIC, {ranked[0]['bic']:.2f}"
                 + (f" ({others})." if others else "."))
    if len(ranked) > 1:
        gap = ranked[1]["bic"] - ranked[0]["bic"]
        lines.append(f"The next best, K = {ranked[1]['K']}, is {gap:.2f} higher: {_strength(gap)} evidence "
                     f"for K = {results['best_K']} (a BIC gap above 10 is very strong, 6-10 strong, "
                     "2-6 positive, below 2 weak).")
    return "\n".join(lines)


LR_CRITICAL = 10.83    # chi-square(1) at 0.1%: the sigma check's test
SIGMA_MARGIN = 0.10    # ... and the estimate must be more than 10% away from the fixed sigma


def _sigma_check(data, fit, K, n_init, seed, tol, store_effects):
    """With sigma fixed: the common sigma estimated at the chosen K and a likelihood-ratio test of
    sigma = the fixed value. Rejects when LR > LR_CRITICAL and sigma-hat is more than SIGMA_MARGIN
    away from it: a difference that matters (standard errors scale with sigma), not just one
    that a large panel can detect."""
    stats = model_statistics(data.sums, "common", store_effects)
    common = fit_stats(stats, K, n_init=n_init, seed=seed, tol=tol)
    fixed = float(fit.sigma[0])
    lr = max(2 * (common.loglik - fit.loglik), 0.0)
    estimate = float(common.sigma[0])
    return {"K": K, "fixed": fixed, "estimate": estimate, "lr": lr,
            "rejects": bool(lr > LR_CRITICAL and abs(estimate / fixed - 1) > SIGMA_MARGIN)}


def analyse(path, Ks=(2, 3, 4), n_init=10, seed=0, tol=1e-8, progress=None, name=None,
            sigma=1.0, store_effects=False, columns=None, x=()):
    """Read a CSV panel (wide or long: see load), estimate each K and return the results.json
    dictionary, whose "data" is `name` (default: the path). Warns (warnings) when the data reject
    a fixed sigma and when BIC picks the largest K tried. progress(K, done, n_init), if given, is
    called after each start."""
    return _analyse(path, Ks, n_init, seed, tol, progress, name, sigma, store_effects, columns, x)[0]


def _analyse(path, Ks, n_init, seed, tol, progress, name, sigma, store_effects, columns, x):
    """analyse's work: (results, {K: Fit}, Loaded)."""
    data = load(path, columns, x)
    try:
        stats = model_statistics(data.sums, sigma, store_effects, data.coefficients)
    except ValueError as problem:
        raise InputError(f"{path}: {problem}") from None
    names = [data.coefficients[j] for j in stats.columns]
    for K in Ks:
        _check_K(K, len(data.stores), where=f"the {len(data.stores)} stores in {path}")
    models, fits = [], {}
    for K in sorted(Ks):                         # each K grows the last one too: nested maxima
        report_start = (lambda done, K=K: progress(K, done, n_init)) if progress else None
        previous = fits[max(fits)] if fits else None
        with warnings.catch_warnings():           # an empty segment is said below, plainly
            warnings.simplefilter("ignore", RuntimeWarning)
            fits[K] = fit_stats(stats, K, n_init=n_init, seed=seed, tol=tol, progress=report_start,
                                previous=previous)
    models = [model_summary(fits[K], stats, names) for K in Ks]
    best = min(models, key=lambda model: model["bic"])["K"]
    W = fits[best].W
    results = {"data": name or path, "stores": len(data.stores), "weeks": data.weeks,
               "observations": int(stats.n.sum()),
               "settings": {"n_init": n_init, "seed": seed, "tol": tol, "sigma": stats.sigma,
                            "store_effects": bool(store_effects), "regressors": names, "format": data.layout},
               "models": models, "best_K": best, "notes": []}
    if not stats.estimates_sigma:
        check = results["sigma_check"] = _sigma_check(data, fits[best], best, n_init, seed, tol, store_effects)
        if check["rejects"]:
            results["notes"].append(
                f"the data reject sigma = {check['fixed']:g}: at K = {best} the estimated common sigma is "
                f"{check['estimate']:.3f} (likelihood ratio {check['lr']:.1f}, p < 0.001), so the standard "
                "errors, log-likelihoods and BIC above are on the wrong scale; use --sigma common or --sigma segment")
    if len(Ks) > 1 and best == max(Ks):
        results["notes"].append(f"BIC picks K = {best}, the largest K tried: more segments may fit "
                                f"better; try a wider --K (e.g. --K {' '.join(map(str, range(1, best + 4)))})")
    for model in models:
        if model["unsupported"]:
            problems = "; ".join(f"segment {c} {why}" for c, why in model["unsupported"].items())
            results["notes"].append(f"K = {model['K']}: {problems}; the data support at most "
                                    f"{model['supported_K']} segments")
    for note in results["notes"]:
        _warn(note, UserWarning)
    results["store_segments"] = _store_segments(data.stores, W)
    return results, fits, data


def _store_segments(stores, W):
    return [{"store": store, "segment": int(W[i].argmax()) + 1, "posterior": W[i].tolist()}
            for i, store in enumerate(stores)]


def segments_csv(stores, W):
    """The segment list for a spreadsheet: store, segment (1..K), the posterior of each segment."""
    import csv
    import io
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["store", "segment"] + [f"posterior_{c + 1}" for c in range(W.shape[1])])
    for i, store in enumerate(stores):
        writer.writerow([store, int(W[i].argmax()) + 1] + [f"{w:.6g}" for w in W[i]])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# The picture (matplotlib, imported only for --plot)
# ---------------------------------------------------------------------------------------------

def plot(results, fits, data):
    """The PNG (bytes) of the chosen K: each store's own (elasticity, level) coloured by its segment with the
    segment centres; the segments' demand curves over the observed price range; BIC against K."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
    K = results["best_K"]
    fit = fits[K]
    model = next(model for model in results["models"] if model["K"] == K)
    names = model["coefficients"]
    price = names.index("log price")
    own = _store_coefficients(model_statistics(data.sums))              # (N, columns of X): raw fit
    segment = fit.W.argmax(axis=1)
    colours = plt.get_cmap("tab10")(np.arange(K) % 10)
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    keep = np.isfinite(own).all(axis=1) & (data.sums.n > data.sums.Xty.shape[1])
    for c in range(K):
        mine = keep & (segment == c)
        left.scatter(own[mine, 1], own[mine, 0], s=14, color=colours[c], alpha=0.7,
                     label=f"segment {c + 1}: {int(mine.sum())} stores")
        if "intercept" in names:
            left.scatter(fit.theta[c, price], fit.theta[c, names.index("intercept")], s=160, marker="X",
                         color=colours[c], edgecolor="black", zorder=3)
        else:
            left.axvline(fit.theta[c, price], color=colours[c], linestyle="--")
    left.set(xlabel="store's own price elasticity (log price coefficient)", ylabel="store's own level (intercept)",
             title="Stores and segment centres (X)" if "intercept" in names else "Stores and segment elasticities (--)")
    left.legend(fontsize=8)
    low, high = data.price_range
    grid = np.exp(np.linspace(low, high, 100))
    for c in range(K):
        if "intercept" in names:
            curve = np.exp(fit.theta[c, names.index("intercept")] + fit.theta[c, price] * np.log(grid))
            label = "sales"
        else:                                    # store effects: relative to the median price
            curve = 100 * np.exp(fit.theta[c, price] * (np.log(grid) - (low + high) / 2))
            label = "sales, % of sales at the middle price"
        middle.plot(grid, curve, color=colours[c], linewidth=2,
                    label=f"segment {c + 1}: elasticity {fit.theta[c, price]:.2f}")
    middle.set(xlabel="price", ylabel=label, title="Demand curves over the observed prices")
    middle.legend(fontsize=8)
    Ks = [m["K"] for m in results["models"]]
    right.plot(Ks, [m["bic"] for m in results["models"]], "o-", color="black")
    right.axvline(K, color="grey", linestyle=":")
    right.set(xlabel="K (segments)", ylabel="BIC (lower is better)", title=f"BIC against K: K = {K} chosen",
              xticks=Ks)
    figure.suptitle(f"{results['data']}: {_describe(results['settings'])}", fontsize=10)
    figure.tight_layout()
    import io
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=110)
    plt.close(figure)
    return picture.getvalue()


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------

def _parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):                # one line, exit code 2
            raise _Refused(f"{message} (see --help)")

    def sigma_setting(text):
        if text in SIGMA_MODES:
            return text
        value = _number_or_none(text)
        if value is None or not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"expected a positive number, 'common' or 'segment'; got {text!r}")
        return value

    parser = Parser(description="Estimate store segments from weekly sales (a mixture of regressions "
                    "of log sales on log price, by EM) for several K; print a report and write JSON.")
    parser.add_argument("csv", nargs="?", default=None,
                        help="CSV file, wide (first column the price, then one column per store) or long "
                             "(one row a store and week: columns store, week, sales, price) "
                             "(default: data/example.csv, made by simulate.py)")
    parser.add_argument("--K", nargs="+", default=["2", "3", "4"], metavar="K",
                        help="numbers of segments (default 2 3 4)")
    parser.add_argument("--n-init", type=int, default=10, help="EM starts for each K (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the starts (default 0)")
    parser.add_argument("--tol", type=float, default=1e-8, help="convergence tolerance (default 1e-8)")
    parser.add_argument("--output", default="results.json", help="JSON file to write (default results.json)")
    parser.add_argument("--segments", metavar="FILE.csv", help="write each store's segment and posteriors")
    parser.add_argument("--segments-K", type=int, metavar="K", help="the K of --segments (default: BIC's choice)")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the chosen K (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    parser.add_argument("--version", action="version", version=f"em_sales {__version__}")
    model = parser.add_argument_group("the model")
    model.add_argument("--sigma", type=sigma_setting, default=1.0, metavar="VALUE|common|segment",
                       help="noise sd: fixed at VALUE (default 1, the course's model), one estimated for all "
                            "segments (common) or one per segment (segment)")
    model.add_argument("--store-effects", action="store_true",
                       help="each store its own intercept (store fixed effects); segments differ in the slopes")
    model.add_argument("--x", nargs="+", default=[], metavar="COL",
                       help="further regressors of a long file, used as they are (not logged)")
    names = parser.add_argument_group("columns of a long file (found by their header otherwise)")
    for role in LONG_COLUMNS:
        names.add_argument(f"--{role}", metavar="COL", help=f"the {role} column")
    return parser


class _Refused(Exception):
    """A command line that cannot be run: its one-line message."""


def _arguments(argv):
    """Parsed and checked arguments, or _Refused. --K 2 3 data.csv takes data.csv as the file."""
    import os
    args = _parser().parse_args(argv)
    Ks = list(args.K)
    if args.csv is None and len(Ks) > 1 and _number_or_none(Ks[-1]) is None:
        args.csv = Ks.pop()                      # --K swallowed the file name
    for K in Ks:
        if not K.lstrip("-").isdigit():
            raise _Refused(f"argument --K: expected whole numbers of segments; got {K!r} (see --help)")
    args.K = list(dict.fromkeys(int(K) for K in Ks))
    if min(args.K) < 1:
        raise _Refused(f"--K must be at least 1; got {min(args.K)}")
    if not 1 <= args.n_init <= MAX_STARTS:
        raise _Refused(f"--n-init must be between 1 and {MAX_STARTS:,}; got {args.n_init} "
                       "(each start is a whole EM run; 10 to 100 are plenty)")
    if args.seed < 0:
        raise _Refused(f"--seed must be a whole number >= 0; got {args.seed}")
    if not (args.tol > 0 and math.isfinite(args.tol)):
        raise _Refused(f"--tol must be a positive number; got {args.tol}")
    if args.segments_K is not None and args.segments_K not in args.K:
        raise _Refused(f"--segments-K {args.segments_K} is not among the K estimated (--K {' '.join(map(str, args.K))})")
    if args.segments_K is not None and not args.segments:
        raise _Refused("--segments-K needs --segments FILE.csv")
    here = os.path.dirname(os.path.abspath(__file__))
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (only to say now, not after the work, that it is missing)
        except ImportError:
            raise _Refused("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
    args.path = args.csv or "data/example.csv"
    if args.csv is None and not os.path.exists(args.path):      # run from another folder
        args.path = os.path.join(here, "data", "example.csv")
    _check_outputs(args)
    return args


def _check_outputs(args):
    """Before any work: no output is the input or another output, and each can be written."""
    import os
    outputs = [(flag, getattr(args, name)) for flag, name in
               (("--output", "output"), ("--segments", "segments"), ("--plot", "plot")) if getattr(args, name)]
    seen = {os.path.realpath(args.path): f"the input file {args.path}"}
    for flag, target in outputs:
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


def _write(target, content):
    """Write content (text or bytes) to target through a temporary file moved into place: never a
    half-written file, and no temporary file left behind, whatever happens (an interrupt included)."""
    import os
    folder = os.path.dirname(os.path.abspath(target))
    temporary = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(content.encode() if isinstance(content, str) else content)
        os.replace(temporary, target)
    except OSError as problem:
        raise _Refused(f"cannot write {target}: {problem.strerror}") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _quiet_stdout():
    """Point standard output at the null device, so that Python's last flush cannot fail again."""
    import os
    import sys
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv=None):
    """The command line (python em_sales.py --help). Returns the exit code: 0, 2 for input or
    arguments that cannot be used (one line on stderr), 130 interrupted (Ctrl-C), 141 standard
    output closed early (| head). Never a traceback."""
    import sys
    try:
        return _main(argv)
    except _Refused as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        return 2


def _main(argv):
    import sys
    import time

    args = _arguments(argv)
    start = time.perf_counter()
    last = [start]

    def progress(K, done, total):                # only when the run is slow enough to wonder
        now = time.perf_counter()
        if not args.quiet and now - start > 2 and (now - last[0] > 2 or done == total):
            print(f"K = {K}: {done} of {total} starts done, {now - start:.1f} s", file=sys.stderr, flush=True)
            last[0] = now

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            with np.errstate(all="ignore"):
                results, fits, data = _analyse(args.path, args.K, args.n_init, args.seed, args.tol, progress,
                                               args.csv or "data/example.csv", args.sigma, args.store_effects,
                                               {role: getattr(args, role) for role in LONG_COLUMNS}, args.x)
        except ValueError as problem:            # InputError, or a panel the model cannot use
            raise _Refused(str(problem)) from None
        if not all(np.isfinite(model["loglik"]) for model in results["models"]):
            raise _Refused(f"{args.path}: the estimates are not finite numbers (values too extreme to fit)")
    _write(args.output, results_json(results))
    if args.segments:
        _write(args.segments, segments_csv(data.stores, fits[args.segments_K or results["best_K"]].W))
    if args.plot:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                picture = plot(results, fits, data)
            except InputError as problem:
                raise _Refused(str(problem)) from None
        _write(args.plot, picture)
    if not args.quiet:
        written = ", ".join(name for name in (args.output, args.segments, args.plot) if name)
        try:
            print(report(results))
            print(f"Results written to {written}")
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as problem:
            _quiet_stdout()
            raise _Refused(f"cannot write the report to standard output: {problem.strerror}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
