"""em_sales: segments of stores from weekly sales, by maximum likelihood with the EM algorithm.

Model, for store i = 1..N and week t = 1..T:

    log S_it = x_t' theta_c + eps_it,   eps_it ~ N(0, 1),   Pr[C_i = c] = pi_c,

where x_t = (1, log p_t) is row t of X (any P columns work), C_i is the store's unobserved segment
and theta_c = (alpha_c, beta_c). The whole store shares one segment, so the likelihood of store i is
a mixture over c of the product over its observed weeks.

The assignment's five functions, with its call forms:

    LogL(theta, pi, y, X) -> float            observed-data log-likelihood
    EStep(theta, pi, y, X) -> W (N, K)        W[i, c] = Pr[C_i = c | y_i, X, theta, pi]
    MStep(y, X, W) -> (theta, pi)             maximiser of the expected complete-data log-likelihood
    EM(K, y, X, tol, max_iter, seed) -> (theta, pi, loglik)
    Estimate(K, y, X, n_init, seed) -> (theta, pi, loglik)   best of n_init runs of EM

y is T x N (log sales; NaN = no observation that week), X is T x P. theta is accepted flat,
(alpha_1, beta_1, ..., alpha_K, beta_K), or as a K x P array, and is returned as a K x P array whose
row c is segment c. Everything is computed from per-store sufficient statistics (n_i, X_i'X_i,
X_i'y_i, y_i'y_i), so after one pass over the data an iteration costs O(N K P^2), whatever T is.
The README derives every formula used here.

Run as a program (python em_sales.py data.csv) it estimates K = 2, 3, 4, prints a report and
writes results.json; see main().
"""
import math
import warnings
from typing import NamedTuple

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
NEWTON_GAIN = 1.0      # EM tries Newton steps once an iteration gains less log-likelihood than this
ROUNDING = 1e-14       # relative rounding error of a log-likelihood: changes below it are noise
WARM_UP = 10           # Estimate's runs start with this many plain EM iterations, all in one batch


class ConvergenceWarning(UserWarning):
    """EM stopped at max_iter before its convergence rule was met."""


# ---------------------------------------------------------------------------------------------
# Sufficient statistics
# ---------------------------------------------------------------------------------------------

class Stats(NamedTuple):
    """Per-store sufficient statistics of a panel; shapes for N stores and P regressors.

    n:   (N,)       number of observed weeks of each store
    XtX: (N, P*P)   X_i'X_i over the store's observed weeks, flattened row by row
    Xty: (N, P)     X_i'y_i
    const: (N,)     -(n_i log 2 pi + y_i'y_i) / 2, the part of log f(y_i | c) free of theta
                    (y_i'y_i, the last sufficient statistic, enters only here)
    """
    n: np.ndarray
    XtX: np.ndarray
    Xty: np.ndarray
    const: np.ndarray

    @property
    def P(self):
        return self.Xty.shape[1]


def sufficient_statistics(y, X):
    """Check a panel and reduce it to its per-store sufficient statistics (one pass over y).

    y: (T, N) log sales, NaN where a store has no observation that week.  X: (T, P).
    Raises ValueError naming the problem when the panel cannot identify the model.
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or X.ndim != 2:
        raise ValueError(f"y must be T x N and X must be T x P; got shapes {y.shape} and {X.shape}")
    T, N = y.shape
    if X.shape[0] != T:
        raise ValueError(f"y has {T} rows (weeks) but X has {X.shape[0]}: they must match")
    if N == 0 or T == 0:
        raise ValueError(f"the panel is empty: y has shape {y.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X has a missing or infinite entry (a missing, zero or negative price?)")
    if np.isinf(y).any():
        raise ValueError("y has an infinite entry (log of a zero sale?)")
    observed = ~np.isnan(y)
    n = observed.sum(axis=0)
    if (n == 0).any():
        store = int(np.argmax(n == 0))
        raise ValueError(f"store {store} (column {store} of y) has no observed week")
    P = X.shape[1]
    if np.linalg.matrix_rank(X[observed.any(axis=1)]) < P:
        raise ValueError(f"the columns of X are collinear (rank < {P}): "
                         "a price that never changes cannot identify a price effect")
    y0 = np.where(observed, y, 0.0)
    if observed.all():                       # the usual case: every store shares X'X
        XtX = np.tile((X.T @ X).ravel(), (N, 1))
    else:
        XtX = observed.T.astype(float) @ (X[:, :, None] * X[:, None, :]).reshape(T, P * P)
    n = n.astype(float)
    yty = np.einsum("tn,tn->n", y0, y0)
    return Stats(n, XtX, y0.T @ X, -0.5 * (n * LOG_2PI + yty))


# ---------------------------------------------------------------------------------------------
# The kernel: log densities, E-step, M-step
# ---------------------------------------------------------------------------------------------

def _log_density(stats, theta):
    """(..., K, N) array of log f(y_i | C_i = c) for theta of shape (..., K, P): segments in rows,
    the layout in which sums and maxima over segments are fast (W is handed out transposed). A
    leading batch of parameter sets is allowed (split-and-merge tries many at once).

    log f = -(n_i/2) log 2 pi - (y_i'y_i - 2 theta_c'X_i'y_i + theta_c'X_i'X_i theta_c) / 2.
    """
    P = theta.shape[-1]
    outer = (theta[..., :, None] * theta[..., None, :]).reshape(theta.shape[:-1] + (P * P,))
    log_f = outer @ stats.XtX.T                    # theta_c'X_i'X_i theta_c, (..., K, N); in place
    log_f -= 2.0 * (theta @ stats.Xty.T)           # from here on: large panels are memory-bound
    log_f *= -0.5
    log_f += stats.const
    return log_f


def _e_step(stats, theta, pi):
    """Posterior segment probabilities W (..., N, K) and the log-likelihood, in log space:
    log sum_c exp(a_c) = max_c a_c + log sum_c exp(a_c - max_c a_c), as scipy's logsumexp does,
    written out because this is the innermost loop (and twice as fast so).
    An empty segment (pi_c = 0) gets log pi_c = -inf and so W[:, c] = 0, without a NaN.
    """
    log_joint = _log_density(stats, theta)
    log_joint += np.log(pi, out=np.full(pi.shape, -np.inf), where=pi > 0)[..., None]   # + log pi_c
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


def _m_step(stats, W):
    """theta_c = (sum_i w_ic X_i'X_i)^-1 sum_i w_ic X_i'y_i and pi_c = mean_i w_ic, for W of
    shape (..., N, K).

    A segment with no weight (or a singular weighted X'X) cannot be estimated: it gets pi_c = 0
    and the pooled least-squares theta, so that nothing downstream sees a NaN.
    """
    P = stats.P
    pi = W.mean(axis=-2)
    weights = W.swapaxes(-1, -2)                                        # (..., K, N)
    A = (weights @ stats.XtX).reshape(weights.shape[:-1] + (P, P))
    b = weights @ stats.Xty
    try:
        theta = np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:                # some system is singular: solve one by one
        theta = np.full(b.shape, np.nan)
        for index in np.ndindex(b.shape[:-1]):
            try:
                theta[index] = np.linalg.solve(A[index], b[index])
            except np.linalg.LinAlgError:
                pass
    ok = np.isfinite(theta).all(axis=-1) & (pi > 0)
    if not ok.all():
        theta[~ok] = _pooled_theta(stats)
        pi = np.where(ok, pi, 0.0)
        pi = pi / pi.sum(axis=-1, keepdims=True)
    return theta, pi


# ---------------------------------------------------------------------------------------------
# Score and observed information: Newton steps near the optimum, standard errors at it
# ---------------------------------------------------------------------------------------------

def _score_hessian(stats, theta, pi, W):
    """Gradient (D,) and Hessian (D, D) of the log-likelihood at (theta, pi), W = EStep there.

    Parameters psi = (theta_1, ..., theta_K, eta_1, ..., eta_{K-1}), D = K P + K - 1, with
    pi = softmax(eta_1, ..., eta_{K-1}, 0). With s_ic the gradient of log(pi_c f_ic) and
    g_i = sum_c w_ic s_ic the store's score, Louis' identity gives (README, "Standard errors")
        H = sum_i sum_c w_ic (d2 log(pi_c f_ic) + s_ic s_ic') - sum_i g_i g_i',
    where s_ic is u_ic = X_i'y_i - X_i'X_i theta_c in the theta_c block, e_c - pi in the eta block.
    """
    N, K = W.shape
    P = stats.P
    KP = K * P
    # u_ic for all c at once: X_i'X_i theta_c is XtX (N, P*P) times a (P*P, K*P) spread of theta
    spread = np.einsum("pr,kq->pqkr", np.eye(P), theta).reshape(P * P, KP)
    u = (np.tile(stats.Xty, K) - stats.XtX @ spread).reshape(N, K, P)
    wu = W[:, :, None] * u                                        # w_ic u_ic
    m = W.sum(axis=0)                                             # expected segment sizes
    p = pi[:K - 1]
    G = np.concatenate([wu.reshape(N, KP), W[:, :K - 1] - p], axis=1)   # g_i, (N, D)
    H = -(G.T @ G)
    A = (W.T @ stats.XtX).reshape(K, P, P)                        # sum_i w_ic X_i'X_i
    within = np.zeros((K, P, K, P))                               # block diagonal in theta
    within[np.arange(K), :, np.arange(K), :] = np.matmul(wu.transpose(1, 2, 0), u.transpose(1, 0, 2)) - A
    cross = (wu.sum(axis=0)[:, :, None] * (np.eye(K)[:, :K - 1] - p)[:, None, :]).reshape(KP, K - 1)
    mp = m[:K - 1]
    H[:KP, :KP] += within.reshape(KP, KP)
    H[:KP, KP:] += cross
    H[KP:, :KP] += cross.T
    H[KP:, KP:] += (np.diag(mp - N * p) - np.outer(mp, p) - np.outer(p, mp)
                    + 2 * N * np.outer(p, p))
    return G.sum(axis=0), H


def _newton_direction(stats, theta, pi, W):
    """(step, decrement) for psi at (theta, pi), or None where no step applies (an empty segment).

    Where -H is positive definite this is Newton's step -H^-1 g. Where it is not (on a ridge or
    near a saddle, where EM crawls) the step uses |eigenvalues| of -H instead (saddle-free Newton,
    Dauphin et al. 2014), which still points uphill. decrement = g'(-H)^-1 g is twice the gain a
    concave quadratic model predicts; it is infinite where -H is not positive definite.
    """
    if pi.min() < 1e-12:
        return None
    grad, H = _score_hessian(stats, theta, pi, W)
    values, vectors = np.linalg.eigh(-H)
    top = np.abs(values).max()
    if not top > 0:
        return None
    along = vectors.T @ grad
    step = vectors @ (along / np.maximum(np.abs(values), 1e-8 * top))
    decrement = float(along @ (along / values)) if values.min() > 0 else math.inf
    return step, decrement


def _newton_step(stats, theta, pi, W, loglik):
    """A Newton step (see _newton_direction), halved until the likelihood rises; None where no
    step applies or none goes uphill. Returns (theta, pi, W, loglik, decrement)."""
    direction = _newton_direction(stats, theta, pi, W)
    if direction is None:
        return None
    step, decrement = direction
    K, P = theta.shape
    eta = np.log(pi[:K - 1]) - np.log(pi[K - 1])
    for _ in range(6):
        new_theta = theta + step[:K * P].reshape(K, P)
        logits = np.append(eta + step[K * P:], 0.0)
        new_pi = np.exp(logits - logits.max())
        new_pi /= new_pi.sum()
        new_W, new_loglik = _e_step(stats, new_theta, new_pi)
        if new_loglik >= loglik - ROUNDING * abs(loglik):    # at the maximum, equal up to rounding
            return new_theta, new_pi, new_W, new_loglik, decrement
        step = step / 2
    return None


# ---------------------------------------------------------------------------------------------
# The EM loop
# ---------------------------------------------------------------------------------------------

class Fit(NamedTuple):
    """One EM run: estimates in segment order, posterior W (N, K), iterations, convergence."""
    theta: np.ndarray
    pi: np.ndarray
    loglik: float
    W: np.ndarray
    n_iter: int
    converged: bool


def _em_step(stats, theta, pi, W):
    theta, pi = _m_step(stats, W)
    return (theta, pi) + _e_step(stats, theta, pi)


def _plain_em(stats, starts, iterations):
    """`iterations` plain EM steps from each of B starts, (theta (K, P), pi (K,)) pairs, all at
    once, in chunks that keep the (chunk, K, N) arrays near 16 MB.
    Returns theta (B, K, P), pi (B, K) and loglik (B,) at the end."""
    theta = np.stack([start[0] for start in starts])
    pi = np.stack([start[1] for start in starts])
    chunk = max(1, 2_000_000 // (theta.shape[1] * len(stats.n)))
    parts = []
    for first in range(0, len(theta), chunk):
        th, p = theta[first:first + chunk], pi[first:first + chunk]
        for _ in range(iterations):
            th, p = _m_step(stats, _e_step(stats, th, p)[0])
        parts.append((th, p, _e_step(stats, th, p)[1]))
    return tuple(np.concatenate(part) for part in zip(*parts))


def _squarem_step(stats, theta, pi, W, loglik):
    """Two EM steps extrapolated along their path (SQUAREM, Varadhan & Roland 2008, SqS3).

    The extrapolated point is kept only when it is a valid parameter with a log-likelihood at
    least that of the two plain steps, so the likelihood never goes down.
    """
    K, P = theta.shape
    th1, pi1, W1, _ = _em_step(stats, theta, pi, W)
    th2, pi2, W2, ll2 = _em_step(stats, th1, pi1, W1)
    x0, x1, x2 = (np.concatenate([t.ravel(), p]) for t, p in ((theta, pi), (th1, pi1), (th2, pi2)))
    r, v = x1 - x0, x2 - 2 * x1 + x0
    v_norm = math.sqrt(v @ v)
    if v_norm > 0:
        alpha = min(-math.sqrt(r @ r) / v_norm, -1.0)
        for _ in range(3):                                       # alpha = -1 gives x2 itself
            if alpha > -1.01:
                break
            x = x0 - 2 * alpha * r + alpha * alpha * v
            if x[K * P:].min() >= 0:
                new_W, new_ll = _e_step(stats, x[:K * P].reshape(K, P), x[K * P:])
                if new_ll >= ll2:
                    return x[:K * P].reshape(K, P), x[K * P:], new_W, new_ll
            alpha = (alpha - 1) / 2                              # back off towards x2
    return th2, pi2, W2, ll2


def _run_em(stats, theta, pi, tol=1e-8, max_iter=10000, accelerate=True):
    """EM from (theta, pi) until converged; returns a Fit.

    Converged means: no posterior probability moved by more than tol in the last iteration, the
    log-likelihood rose by less than tol, and (where the Hessian is negative definite) a Newton
    step would add less than tol: the last test is what tells a maximum from a slow plateau.
    accelerate=False runs plain EM, one M-step and one E-step an iteration. Accelerated runs take
    Newton steps once the gains are small (SQUAREM steps before), so the last test comes with the
    step. See _polish for the last digits.
    """
    W, loglik = _e_step(stats, theta, pi)
    gain = np.inf
    for iteration in range(1, max_iter + 1):
        decrement, newton = None, None
        # Newton only near a maximum (where the last step gained little): elsewhere the Hessian
        # is rarely negative definite and computing it would be wasted
        tried_newton = accelerate and gain < NEWTON_GAIN
        if tried_newton:
            newton = _newton_step(stats, theta, pi, W, loglik)
        if newton is not None:
            new_theta, new_pi, new_W, new_loglik, decrement = newton
        elif accelerate:
            new_theta, new_pi, new_W, new_loglik = _squarem_step(stats, theta, pi, W, loglik)
        else:
            new_theta, new_pi, new_W, new_loglik = _em_step(stats, theta, pi, W)
        gain = new_loglik - loglik
        still = gain <= tol and np.abs(new_W - W).max() <= tol
        theta, pi, W, loglik = new_theta, new_pi, new_W, new_loglik
        if still and decrement is None and (tried_newton or not accelerate):
            decrement = _remaining_gain(stats, theta, pi, W)       # 0 where Newton cannot help
        if still and decrement is not None and decrement <= 2 * tol:
            return Fit(theta, pi, loglik, W, iteration, True)
    return Fit(theta, pi, loglik, W, max_iter, False)


def _polish(stats, fit):
    """Up to two more Newton steps from a converged fit: Newton converges quadratically there, so
    the estimate becomes the maximum to machine precision, not merely within tol of it."""
    for _ in range(2):
        step = _newton_step(stats, fit.theta, fit.pi, fit.W, fit.loglik) if fit.converged else None
        if step is None:
            break
        fit = fit._replace(theta=step[0], pi=step[1], W=step[2], loglik=step[3])
    return fit


def _remaining_gain(stats, theta, pi, W):
    """Newton decrement at (theta, pi); 0 where the log-likelihood is not locally concave (a
    saddle or an empty segment), where Newton has nothing to say about a plain EM run's end."""
    direction = _newton_direction(stats, theta, pi, W)
    return 0.0 if direction is None or math.isinf(direction[1]) else direction[1]


# ---------------------------------------------------------------------------------------------
# Starting values and the search for the global maximum
# ---------------------------------------------------------------------------------------------

def _store_coefficients(stats):
    """Each store's own least-squares coefficients b_i (N, P), the sufficient statistic of
    store i for theta: log f(y_i | c) = const_i - (b_i - theta_c)' X_i'X_i (b_i - theta_c) / 2.
    A store with too few weeks to identify b_i gets the minimum-norm solution."""
    N, P = stats.Xty.shape
    XtX = stats.XtX.reshape(N, P, P)
    try:
        return np.linalg.solve(XtX, stats.Xty[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(XtX) @ stats.Xty[:, :, None])[:, :, 0]


def _distances(stats, coefficients, centres):
    """(N, K) matrix of (b_i - theta_c)' X_i'X_i (b_i - theta_c) for centres (K, P): twice the
    log-likelihood that store i loses when its own coefficients b_i are replaced by theta_c."""
    P = coefficients.shape[1]
    gap = coefficients[:, None, :] - centres[None]                     # (N, K, P)
    return np.einsum("nkp,npq,nkq->nk", gap, stats.XtX.reshape(-1, P, P), gap)


def _kmeanspp_start(stats, coefficients, K, rng):
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on the stores' own coefficients, in the
    likelihood's own metric: K stores' b_i, each drawn with probability proportional to its
    distance (b_i - theta)' X_i'X_i (b_i - theta) to the nearest one drawn before. pi uniform."""
    N = len(coefficients)
    chosen = [int(rng.integers(N))]
    nearest = np.full(N, np.inf)
    for _ in range(K - 1):
        nearest = np.minimum(nearest, _distances(stats, coefficients, coefficients[chosen[-1:]])[:, 0])
        total = nearest.sum()
        chosen.append(int(rng.choice(N, p=nearest / total)) if total > 0 else int(rng.integers(N)))
    return coefficients[chosen].copy(), np.full(K, 1.0 / K)


def _split(stats, coefficients, fit, drop, split):
    """Start that removes segment `drop` and splits segment `split` in two (split-and-merge EM,
    Ueda et al. 2000): the two halves sit one standard deviation either side of theta_split along
    the main axis of its stores' coefficients, measured in the likelihood's metric. None where
    the segment's stores do not identify theta (their summed X_i'X_i is singular)."""
    K, P = fit.theta.shape
    w = fit.W[:, split]
    centre = fit.theta[split]
    information = (w @ stats.XtX).reshape(P, P) / w.sum()       # mean X_i'X_i of the segment
    gap = coefficients - centre
    spread = np.einsum("n,np,nq->pq", w, gap, gap) / w.sum()
    try:
        root = np.linalg.cholesky(information)                    # whiten, take the main axis
    except np.linalg.LinAlgError:                                 # its stores cannot tell theta:
        return None                                               # no split of this segment
    values, vectors = np.linalg.eigh(root.T @ spread @ root)
    axis = np.linalg.solve(root.T, vectors[:, -1]) * math.sqrt(max(values[-1], 0.0))
    keep = [c for c in range(K) if c not in (drop, split)]
    theta = np.vstack([fit.theta[keep], centre + axis, centre - axis])
    pi = np.append(fit.pi[keep], [fit.pi[split] / 2, fit.pi[split] / 2])
    return theta, pi / pi.sum()


def _new_at_outliers(coefficients, distance, fit, drop, how_many=2):
    """Starts that remove segment `drop` and open a segment at a store that the fit explains
    badly (greedy EM, Vlassis & Likas 2002): a store far from every segment can be worth a
    segment of its own, a maximum that splitting existing segments does not reach. The stores:
    the `how_many` farthest from all segments, and those farthest from the segments that remain.
    distance[i, c] = (b_i - theta_c)' X_i'X_i (b_i - theta_c)."""
    K = fit.theta.shape[0]
    keep = [c for c in range(K) if c != drop]
    farthest = [np.argsort(-distance[:, columns].min(axis=1), kind="stable")[:how_many]
                for columns in (list(range(K)), keep)]
    for store in dict.fromkeys(np.concatenate(farthest).tolist()):
        pi = np.append(fit.pi[keep], 1.0 / len(coefficients))
        yield np.vstack([fit.theta[keep], coefficients[store]]), pi / pi.sum()


def _split_and_merge(stats, coefficients, fit, tol, max_iter, trial_iterations=5):
    """Improve a converged fit by moving a segment (split-and-merge EM, Ueda et al. 2000): drop
    one segment and either split another in two (_split) or open one at a badly fitted store
    (_new_at_outliers). All such starts get a few plain EM iterations together (a batch), the two
    most promising run to convergence, and the better is kept if the likelihood rose; repeat until
    no move helps. This is what finds the maxima that random starts reach only rarely (README, "Starting
    values, convergence, and the global maximum")."""
    K = fit.theta.shape[0]
    while K > 1 and fit.pi.min() > 0:
        distance = _distances(stats, coefficients, fit.theta)
        starts = [_split(stats, coefficients, fit, drop, split)
                  for drop in range(K) for split in range(K) if split != drop]
        starts = [start for start in starts if start is not None]
        starts += [start for drop in range(K) for start in _new_at_outliers(coefficients, distance, fit, drop)]
        theta, pi, loglik = _plain_em(stats, starts, trial_iterations)
        promising = np.argsort(-loglik)[:2]
        candidate = max((_run_em(stats, theta[j], pi[j], tol=tol, max_iter=max_iter) for j in promising),
                        key=lambda run: run.loglik)
        if candidate.loglik <= fit.loglik + tol:
            break
        fit = candidate._replace(n_iter=fit.n_iter + candidate.n_iter)
    return fit


def _canonical(fit):
    """Segments in canonical order: increasing coefficient of the last column of X (beta, the
    price elasticity: most price-sensitive first), ties broken by the columns before it."""
    order = np.lexsort(fit.theta.T)
    return fit._replace(theta=fit.theta[order], pi=fit.pi[order], W=fit.W[:, order])


# ---------------------------------------------------------------------------------------------
# Checking arguments
# ---------------------------------------------------------------------------------------------

def _check_K(K, N):
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        raise ValueError(f"K must be a whole number of segments; got {K!r}")
    if K < 1:
        raise ValueError(f"K must be at least 1; got K = {K}")
    if K > N:
        raise ValueError(f"K = {K} segments is more than the {N} stores in y")


def _check_settings(tol, max_iter):
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a whole number >= 1; got {max_iter!r}")


def _check_parameters(theta, pi, P):
    """pi as a (K,) probability vector and theta as a (K, P) array, or ValueError."""
    pi = np.asarray(pi, dtype=float).ravel()
    if pi.size == 0 or not np.all(np.isfinite(pi)) or (pi < 0).any() or abs(pi.sum() - 1) > 1e-8:
        raise ValueError(f"pi must be a probability vector (entries >= 0 summing to 1); got {pi}")
    K = pi.size
    theta = np.asarray(theta, dtype=float)
    if theta.size != K * P or theta.ndim not in (1, 2) or (theta.ndim == 2 and theta.shape != (K, P)):
        raise ValueError(f"theta has shape {theta.shape}; with K = {K} segments (the length of pi) "
                         f"and P = {P} columns of X it must have K*P = {K * P} entries, flat or K x P")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta has a missing or infinite entry")
    return theta.reshape(K, P), pi


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

def LogL(theta, pi, y, X):
    """Observed-data log-likelihood sum_i log sum_c pi_c f(y_i | theta_c) (a float).

    theta: K*P values, flat (alpha_1, beta_1, ...) or K x P; pi: (K,); y: (T, N) with NaN for
    unobserved weeks; X: (T, P)."""
    stats = sufficient_statistics(y, X)
    theta, pi = _check_parameters(theta, pi, stats.P)
    return _e_step(stats, theta, pi)[1]


def EStep(theta, pi, y, X):
    """(N, K) matrix W of posterior probabilities W[i, c] = Pr[C_i = c | y_i, X, theta, pi]."""
    stats = sufficient_statistics(y, X)
    theta, pi = _check_parameters(theta, pi, stats.P)
    return _e_step(stats, theta, pi)[0]


def MStep(y, X, W):
    """(theta (K, P), pi (K,)) maximising the expected complete-data log-likelihood given the
    (N, K) segment probabilities W: K weighted least-squares fits and pi_c = mean_i W[i, c].
    A segment with no weight gets pi_c = 0 and the pooled least-squares theta."""
    stats = sufficient_statistics(y, X)
    return _m_step(stats, _check_W(W, stats.n.size))


def _warn_about(fit, what):
    if not fit.converged:
        warnings.warn(f"{what} reached max_iter = {fit.n_iter} iterations before converging; "
                      "the estimate may be short of the maximum", ConvergenceWarning, stacklevel=3)
    if fit.pi.min() == 0:
        warnings.warn(f"{what} ended with an empty segment (pi_c = 0): the data support fewer "
                      "segments from this start", RuntimeWarning, stacklevel=3)


def EM(K, y, X, tol=1e-8, max_iter=10000, seed=None, accelerate=True):
    """One EM run from a k-means++ start drawn with `seed`: (theta (K, P), pi (K,), loglik).

    Converged when no posterior probability moves by more than tol, the log-likelihood rises by
    less than tol and a Newton step would add less than tol. accelerate=True (the default) takes
    Newton steps where the log-likelihood is locally concave and SQUAREM steps elsewhere, both only
    when they raise the likelihood; accelerate=False is plain EM. Segments in canonical order."""
    stats = sufficient_statistics(y, X)
    _check_K(K, stats.n.size)
    _check_settings(tol, max_iter)
    rng = np.random.default_rng(seed)
    start = _kmeanspp_start(stats, _store_coefficients(stats), K, rng)
    fit = _run_em(stats, *start, tol=tol, max_iter=max_iter, accelerate=accelerate)
    fit = _canonical(_polish(stats, fit) if accelerate else fit)
    _warn_about(fit, "EM")
    return fit.theta, fit.pi, fit.loglik


def fit_mixture(K, y, X, n_init=10, seed=None, tol=1e-8, max_iter=10000):
    """Estimate's work, returning the whole Fit: theta, pi, loglik, W, n_iter, converged."""
    stats = sufficient_statistics(y, X)
    _check_K(K, stats.n.size)
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be a whole number >= 1; got {n_init!r}")
    _check_settings(tol, max_iter)
    rng = np.random.default_rng(seed)
    coefficients = _store_coefficients(stats)
    starts = [_kmeanspp_start(stats, coefficients, K, rng) for _ in range(n_init)]
    # the runs' first, plain iterations together (far from a maximum they need no acceleration)
    warm_up = min(WARM_UP, max_iter - 1)
    theta, pi, _ = _plain_em(stats, starts, warm_up)
    runs = [_run_em(stats, theta[j], pi[j], tol=tol, max_iter=max_iter - warm_up) for j in range(n_init)]
    runs = [run._replace(n_iter=run.n_iter + warm_up) for run in runs]
    best = max(runs, key=lambda run: run.loglik)
    best = _split_and_merge(stats, coefficients, best, tol, max_iter)
    fit = _canonical(_polish(stats, best))
    _warn_about(fit, "Estimate")
    return fit


def Estimate(K, y, X, n_init=10, seed=None):
    """Best of n_init EM runs from different k-means++ starts, improved by split-and-merge moves:
    (theta (K, P), pi (K,), loglik) at the highest log-likelihood found. Same seed, same result."""
    fit = fit_mixture(K, y, X, n_init=n_init, seed=seed)
    return fit.theta, fit.pi, fit.loglik


# ---------------------------------------------------------------------------------------------
# Standard errors
# ---------------------------------------------------------------------------------------------

def _covariance(stats, theta, pi):
    """Covariance (K P + K, K P + K) of (theta flat, pi_1..pi_K) from the observed information.

    The inverse of -H in psi = (theta, eta), carried to pi by the delta method with
    d pi_c / d eta_d = pi_c (1[c = d] - pi_d), d < K. All NaN where -H is not positive definite
    (not a maximum, or an empty segment), because no standard error is meaningful there.
    """
    K, P = theta.shape
    size = K * P + K
    if pi.min() <= 0:
        return np.full((size, size), np.nan)
    W, _ = _e_step(stats, theta, pi)
    _, H = _score_hessian(stats, theta, pi, W)
    try:
        np.linalg.cholesky(-H)
    except np.linalg.LinAlgError:
        return np.full((size, size), np.nan)
    cov_psi = np.linalg.solve(-H, np.eye(H.shape[0]))
    J = np.zeros((size, H.shape[0]))
    J[:K * P, :K * P] = np.eye(K * P)
    J[K * P:, K * P:] = (np.diag(pi) - np.outer(pi, pi))[:, :K - 1]
    return J @ cov_psi @ J.T


def StandardErrors(theta, pi, y, X):
    """Standard errors (se_theta (K, P), se_pi (K,)) at a maximum (theta, pi), from the observed
    information; NaN where the information is singular (an empty or duplicated segment)."""
    stats = sufficient_statistics(y, X)
    theta, pi = _check_parameters(theta, pi, stats.P)
    se = np.sqrt(np.diag(_covariance(stats, theta, pi)))
    K, P = theta.shape
    return se[:K * P].reshape(K, P), se[K * P:]


# ---------------------------------------------------------------------------------------------
# Reading a panel from a CSV file
# ---------------------------------------------------------------------------------------------

MISSING = ("", "NA", "NaN", "nan")            # cells that mean "no observation this week"


class InputError(ValueError):
    """A file that cannot be used, with a message naming the file, where and what."""


def _read_text(path):
    """The file's text (UTF-8 with or without a byte-order mark, else Windows-1252)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a CSV file") from None
    except OSError as problem:
        raise InputError(f"{path}: cannot be read ({problem.strerror})") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        text = "\0"
    if any(ch < " " and ch not in "\t\n\r\f" for ch in text):
        raise InputError(f"{path}: is not a text file (binary or unreadable content); "
                         "expected a CSV file of prices and sales")
    return text


def read_panel(path):
    """Read a CSV panel: first column the price, every other column a store, one row a week.

    Separators ',' ';' or tab (taken from the header line); with ';' or tab, decimal commas are
    read too (a spreadsheet export). An empty cell (or NA, NaN) is a week without an observation.
    A byte-order mark, spaces around cells, empty lines and trailing empty columns are ignored.
    Returns (price (T,), sales (T, N) with NaN where missing, store names); raises InputError
    naming the file, line and column of the first problem.
    """
    import csv

    text = _read_text(path)
    lines = text.splitlines()
    kept = [number for number, line in enumerate(lines, 1) if line.strip(" \t,;")]
    if not kept:
        raise InputError(f"{path}: the file is empty")
    header_line = lines[kept[0] - 1]
    sep = ";" if ";" in header_line else "\t" if "\t" in header_line else ","
    header = [name.strip() for name in next(csv.reader([header_line], delimiter=sep))]
    while len(header) > 1 and header[-1] == "":          # trailing separators of a spreadsheet
        header.pop()
    width = len(header)
    for number in kept:                                  # else csv would join the lines that follow
        if lines[number - 1].count('"') % 2:
            raise InputError(f"{path}: line {number}: a quote (\") opens a cell that never closes")
    body = (lines[number - 1] for number in kept[1:])
    if sep != ",":                                       # decimal commas: 2,39 is 2.39
        body = (line.replace(",", ".") for line in body)
    values = np.full((len(kept) - 1, width), np.nan)
    for row, cells in enumerate(csv.reader(body, delimiter=sep, skipinitialspace=True)):
        while len(cells) > width and cells[-1].strip() == "":
            cells.pop()
        if len(cells) > width:
            raise InputError(f"{path}: line {kept[row + 1]} has {len(cells)} cells, more than the "
                             f"header's {width}")
        try:                                             # the fast way, right for most rows
            values[row, :len(cells)] = np.array([cell or "nan" for cell in cells], dtype=float)
        except ValueError:
            line = kept[row + 1]
            as_written = next(csv.reader([lines[line - 1]], delimiter=sep, skipinitialspace=True))
            values[row, :len(cells)] = _cells_one_by_one(path, cells, as_written, header, line)
    return _checked_panel(path, values, header, kept[1:])


def _cells_one_by_one(path, cells, as_written, header, line):
    """A row's numbers with MISSING cells as NaN, or InputError naming the first bad cell as it
    is written in the file."""
    numbers = []
    for j, cell in enumerate(cells):
        cell = cell.strip()
        try:
            numbers.append(np.nan if cell in MISSING else float(cell))
        except ValueError:
            shown = as_written[j].strip() if j < len(as_written) else cell
            raise InputError(f"{path}: line {line}, column '{header[j] or j + 1}': '{shown}' is not "
                             "a number") from None
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
    for t in range(T):
        if np.isnan(price[t]):
            raise InputError(f"{path}: line {line_of_row[t]}: the price ('{price_name}') is missing")
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


def panel_arrays(price, sales):
    """The model's y = log sales (T, N) and X = [1, log price] (T, 2)."""
    return np.log(sales), np.column_stack([np.ones_like(price), np.log(price)])


# ---------------------------------------------------------------------------------------------
# Model comparison, results.json and the report
# ---------------------------------------------------------------------------------------------

def model_summary(fit, stats):
    """Everything results.json says of one fitted model: estimates, standard errors, criteria.

    n_params = K P + K - 1; AIC = 2 k - 2 log L; BIC = k log(observed cells) - 2 log L;
    ICL = BIC + 2 EN with EN = -sum_ic w_ic log w_ic the classification entropy; entropy is the
    normalised 1 - EN / (N log K): 1 when every store's segment is certain (1 too for K = 1).
    """
    K, P = fit.theta.shape
    N = fit.W.shape[0]
    se = np.sqrt(np.diag(_covariance(stats, fit.theta, fit.pi)))
    k = K * P + K - 1
    n_obs = stats.n.sum()
    W = fit.W
    classification_entropy = float(-np.sum(W[W > 0] * np.log(W[W > 0])))
    bic = k * math.log(n_obs) - 2 * fit.loglik
    return {"K": K, "theta": fit.theta.tolist(), "pi": fit.pi.tolist(),
            "se": {"theta": se[:K * P].reshape(K, P).tolist(), "pi": se[K * P:].tolist()},
            "loglik": fit.loglik, "n_params": k, "aic": 2 * k - 2 * fit.loglik, "bic": bic,
            "icl": bic + 2 * classification_entropy,
            "entropy": 1.0 - classification_entropy / (N * math.log(K)) if K > 1 else 1.0,
            "iterations": fit.n_iter, "converged": fit.converged,
            "stores_in_segment": np.bincount(W.argmax(axis=1), minlength=K).tolist()}


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


def report(results):
    """The printed report: a table of segments for each K, the criteria, then the BIC choice.
    Takes analyse()'s dictionary, or the same read back from results.json."""
    lines = [f"{results['data']}: {results['stores']} stores x {results['weeks']} weeks, "
             f"{results['observations']} observed cells; best of {results['settings']['n_init']} "
             f"starts for each K (seed {results['settings']['seed']})", ""]
    for model in results["models"]:
        status = (f"converged after {model['iterations']} iterations" if model["converged"]
                  else f"NOT converged after {model['iterations']} iterations")
        lines.append(f"K = {model['K']}   log-likelihood {model['loglik']:.4f}   "
                     f"free parameters {model['n_params']}   {status}")
        lines.append(f"        AIC {model['aic']:.2f}   BIC {model['bic']:.2f}   ICL {model['icl']:.2f}   "
                     f"entropy {model['entropy']:.3f}")
        lines.append("  segment      alpha    (s.e.)       beta    (s.e.)         pi    (s.e.)   stores")
        se = model["se"]
        for c in range(model["K"]):
            (alpha, beta), (se_alpha, se_beta) = model["theta"][c][:2], se["theta"][c][:2]
            lines.append(f"  {c + 1:7d} {_number(alpha, 10)} ({_number(se_alpha, 7)}) {_number(beta, 10)} "
                         f"({_number(se_beta, 7)}) {_number(model['pi'][c], 10)} "
                         f"({_number(se['pi'][c], 7)}) {model['stores_in_segment'][c]:8d}")
        lines.append("")
    ranked = sorted(results["models"], key=lambda model: model["bic"])
    others = ", ".join(f"K = {model['K']}: +{model['bic'] - ranked[0]['bic']:.2f}" for model in ranked[1:])
    lines.append(f"BIC chooses K = {results['best_K']}: the lowest BIC, {ranked[0]['bic']:.2f}"
                 + (f" ({others})." if others else "."))
    return "\n".join(lines)


def analyse(path, Ks=(2, 3, 4), n_init=10, seed=0, tol=1e-8, progress=None, name=None):
    """Read a CSV panel, estimate each K and return the results.json dictionary, whose "data"
    is `name` (default: the path)."""
    price, sales, stores = read_panel(path)
    y, X = panel_arrays(price, sales)
    stats = sufficient_statistics(y, X)
    for K in Ks:
        if K > len(stores):
            raise InputError(f"K = {K} segments is more than the {len(stores)} stores in {path}")
    models, fits = [], {}
    for K in Ks:
        if progress:
            progress(K)
        fits[K] = fit_mixture(K, y, X, n_init=n_init, seed=seed, tol=tol)
        models.append(model_summary(fits[K], stats))
    best = min(models, key=lambda model: model["bic"])["K"]
    W = fits[best].W
    return {"data": name or path, "stores": len(stores), "weeks": len(price), "observations": int(stats.n.sum()),
            "settings": {"n_init": n_init, "seed": seed, "tol": tol},
            "models": models, "best_K": best,
            "store_segments": [{"store": store, "segment": int(W[i].argmax()) + 1, "posterior": W[i].tolist()}
                               for i, store in enumerate(stores)]}


def main(argv=None):
    import argparse
    import os
    import sys
    import time

    class Parser(argparse.ArgumentParser):
        def error(self, message):                # one line, exit code 2
            sys.stderr.write(f"error: {message} (see --help)\n")
            sys.exit(2)

    here = os.path.dirname(os.path.abspath(__file__))
    parser = Parser(description="Estimate store segments from weekly sales (a mixture of regressions "
                    "of log sales on log price, by EM) for several K; print a report and write JSON.")
    parser.add_argument("csv", nargs="?", default=None,
                        help="CSV file: first column the price, then one column per store "
                             "(default: data/example.csv, made by simulate.py)")
    parser.add_argument("--K", type=int, nargs="+", default=[2, 3, 4], help="numbers of segments (default 2 3 4)")
    parser.add_argument("--n-init", type=int, default=10, help="EM starts for each K (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the starts (default 0)")
    parser.add_argument("--tol", type=float, default=1e-8, help="convergence tolerance (default 1e-8)")
    parser.add_argument("--output", default="results.json", help="JSON file to write (default results.json)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    args = parser.parse_args(argv)
    if min(args.K) < 1:
        parser.error(f"--K must be at least 1; got {min(args.K)}")
    if args.n_init < 1:
        parser.error(f"--n-init must be at least 1; got {args.n_init}")
    if not args.tol > 0:
        parser.error(f"--tol must be positive; got {args.tol}")
    path = args.csv or "data/example.csv"
    if args.csv is None and not os.path.exists(path):          # run from another folder
        path = os.path.join(here, "data", "example.csv")

    start = time.perf_counter()

    def progress(K):                             # only when the run is slow enough to wonder
        if not args.quiet and time.perf_counter() - start > 2:
            print(f"estimating K = {K} ...", file=sys.stderr, flush=True)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            results = analyse(path, list(dict.fromkeys(args.K)), args.n_init, args.seed, args.tol, progress,
                              name=args.csv or "data/example.csv")
        except ValueError as problem:            # InputError, or a panel the model cannot use
            print(f"error: {problem}", file=sys.stderr)
            return 2
    text = results_json(results)
    folder = os.path.dirname(os.path.abspath(args.output))
    temporary = os.path.join(folder, f".{os.path.basename(args.output)}.{os.getpid()}.tmp")
    try:                                         # never a half-written results file
        with open(temporary, "w") as out:
            out.write(text)
        os.replace(temporary, args.output)
    except OSError as problem:
        print(f"error: cannot write {args.output}: {problem.strerror}", file=sys.stderr)
        if os.path.exists(temporary):
            os.remove(temporary)
        return 2
    if not args.quiet:
        print(report(results))
        print(f"Results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
