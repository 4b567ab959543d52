"""Simulated store panels with a known truth, for testing em_sales and for trying it out.

    log S_it = a_i + alpha[C_i] + beta[C_i] log p_it + eps_it,   eps_it ~ N(0, sigma[C_i]^2),
    Pr[C_i = c] = pi_c,

with, by default, the course's model: sigma = 1, no store effects (a_i = 0) and one price a week
for every store (p_it = p_t). Options: the noise sd (one, or one a segment), store intercepts
a_i ~ N(0, store_sd^2), store prices p_it = p_t exp(price_sd z_it) around the weekly price, and
covariates of membership: store covariates z_i ~ N(0, I) and Pr[C_i = c | z_i] =
softmax_c(gamma_c'(1, z_i)) in place of pi_c.

Importable (simulate() returns a Panel) and a command line that writes the course data's format,
first column Price then Sales1..SalesN, a missing cell left empty, or a long file (--long: one row
a store and week, columns store, week, sales, price; a missing cell is a row left out), and the
truth as JSON:

    python simulate.py                       # data/example.csv and data/example_truth.json
    python simulate.py --stores 10000 --missing 0.05 --seed 7 --output big.csv
    python simulate.py --sigma 0.4 --store-sd 1 --price-sd 0.1 --long --output long.csv
    python simulate.py --gamma 0 0 0  -1 1.5 0  0.5 0 -1 --output cov.csv   # and cov_stores.csv

The defaults mimic the course data: 52 weeks, 300 stores, prices between 1.10 and 7.70 and three
segments close to the K = 3 estimate on it.
"""
import argparse
import json
import math
import os
import sys
from typing import NamedTuple

import numpy as np

DEFAULT_THETA = ((11.65, -1.82), (9.89, -1.20), (10.79, -1.06))   # (alpha_c, beta_c), c = 1..3
DEFAULT_PI = (0.09, 0.07, 0.84)
DEFAULT_SEED = 20261124                                            # the seed of data/example.csv


class Panel(NamedTuple):
    """A simulated panel. price (T,) or, with store prices, (T, N); sales (T, N) with NaN where
    missing, y = log sales (T, N), X = [1, log price] (T, 2) or (T, N, 2), segment (N,) in 0..K-1
    (row of theta), theta (K, 2), pi (K,), sigma (K,), store_effect (N,) the a_i; with covariates
    of membership covariates (N, Q) the z_i and gamma (K, 1 + Q)."""
    price: np.ndarray
    sales: np.ndarray
    y: np.ndarray
    X: np.ndarray
    segment: np.ndarray
    theta: np.ndarray
    pi: np.ndarray
    sigma: np.ndarray = np.ones(1)
    store_effect: np.ndarray = np.zeros(1)
    covariates: np.ndarray = None
    gamma: np.ndarray = None


def simulate(N=300, T=52, theta=DEFAULT_THETA, pi=DEFAULT_PI, price_range=(1.1, 7.7),
             missing=0.0, seed=None, sigma=1.0, store_sd=0.0, price_sd=0.0, gamma=None, ar=0.0):
    """Draw a panel of N stores over T weeks from the model with parameters theta (K x 2) and pi.

    Prices are uniform on price_range, rounded to cents and shared by all stores; with
    price_sd > 0 each store's price is the week's times exp(price_sd z_it), rounded to cents.
    Each store's segment is drawn from pi, its intercept a_i from N(0, store_sd^2), its noise has
    sd sigma (one value, or one per segment). With missing > 0 each cell is dropped with that
    probability, but every store keeps at least two weeks with different prices, so that it
    stays usable. With gamma (K x (1 + Q)) each store has Q covariates drawn from N(0, 1) and its
    segment from softmax_c(gamma_c'(1, z_i)), not from pi. With ar (-1 < ar < 1) a store's errors
    are AR(1) over its weeks, e_t = ar e_{t-1} + sqrt(1 - ar^2) eps_t (the same sd). With the
    defaults the draws are those of earlier versions, seed for seed.
    """
    theta = np.asarray(theta, dtype=float).reshape(-1, 2)
    pi = np.asarray(pi, dtype=float)
    if pi.shape != (theta.shape[0],) or (pi < 0).any() or abs(pi.sum() - 1) > 1e-9:
        raise ValueError(f"pi must be a probability vector with one entry per row of theta; got {pi}")
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float).ravel(), (len(pi),)).copy() \
        if np.size(sigma) in (1, len(pi)) else None
    if sigma is None or not np.all(sigma > 0):
        raise ValueError(f"sigma must be one positive number or one per segment; got {sigma}")
    if not (store_sd >= 0 and price_sd >= 0):
        raise ValueError(f"store_sd and price_sd must be >= 0; got {store_sd}, {price_sd}")
    if not 0 <= missing < 1:
        raise ValueError(f"missing must be a fraction in [0, 1); got {missing}")
    if N < 1 or T < 2:
        raise ValueError(f"need at least 1 store and 2 weeks; got N = {N}, T = {T}")
    rng = np.random.default_rng(seed)
    price = np.round(rng.uniform(*price_range, size=T), 2)
    while np.ptp(price) == 0:                                  # a price that moves, always
        price = np.round(rng.uniform(*price_range, size=T), 2)
    X = np.column_stack([np.ones(T), np.log(price)])
    z = None
    if gamma is None:
        segment = rng.choice(len(pi), size=N, p=pi)
    else:
        gamma = np.asarray(gamma, dtype=float).reshape(len(pi), -1)
        z = rng.standard_normal((N, gamma.shape[1] - 1))
        eta = np.column_stack([np.ones(N), z]) @ gamma.T
        prior = np.exp(eta - eta.max(axis=1, keepdims=True))
        prior /= prior.sum(axis=1, keepdims=True)
        segment = (rng.random(N)[:, None] > np.cumsum(prior, axis=1)).sum(axis=1).clip(0, len(pi) - 1)
    noise = rng.standard_normal((T, N))
    if ar:
        if not -1 < ar < 1:
            raise ValueError(f"ar must be between -1 and 1; got {ar}")
        for t in range(1, T):
            noise[t] = ar * noise[t - 1] + np.sqrt(1 - ar * ar) * noise[t]
    y = X @ theta[segment].T + noise * sigma[segment]
    if price_sd > 0 or store_sd > 0:           # draws after the course model's, so those stay
        effect = rng.normal(0.0, store_sd, N) if store_sd > 0 else np.zeros(N)
        if price_sd > 0:
            price = np.maximum(np.round(price[:, None] * np.exp(price_sd * rng.standard_normal((T, N))), 2), 0.01)
            weekly, X = X, np.stack([np.ones((T, N)), np.log(price)], axis=-1)
            y += np.einsum("tnp,np->tn", X, theta[segment]) - weekly @ theta[segment].T
        y += effect
    else:
        effect = np.zeros(N)
    if missing > 0:
        keep = rng.random((T, N)) >= missing
        low, high = (np.argmin(price, axis=0), np.argmax(price, axis=0)) if price.ndim == 2 else \
            (np.full(N, np.argmin(price)), np.full(N, np.argmax(price)))
        thin = np.flatnonzero(keep.sum(axis=0) < 2)
        keep[low[thin], thin] = keep[high[thin], thin] = True
        y = np.where(keep, y, np.nan)
    return Panel(price, np.exp(y), y, X, segment, theta, pi, sigma, effect, z, gamma)


def write_long(path, price, sales, x=None, x_names=()):
    """A long file: store, week, sales, price (and the columns x (T, N, q) named x_names), one row
    a store and week; a missing cell is a row left out. price is (T,) or (T, N)."""
    T, N = sales.shape
    price = np.broadcast_to(price.reshape(T, -1), (T, N))
    with open(path, "w", newline="") as out:
        out.write(",".join(["store", "week", "sales", "price", *x_names]) + "\n")
        for i in range(N):
            for t in range(T):
                if not np.isnan(sales[t, i]):
                    extra = "".join(f",{value:.10g}" for value in (x[t, i] if x is not None else ()))
                    out.write(f"S{i + 1},{t + 1},{sales[t, i]:.10g},{price[t, i]:.2f}{extra}\n")


ODD_STORES = {"never featured": (0, 1, 2, 3), "one week": (4,), "two weeks": (5,), "a fixed price": (6,),
              "always on deal": (7, 8)}    # stores of odd_panel, by what is odd about them; every 5th enters late


def odd_panel(path, N=60, T=30, seed=3):
    """A long file (store, week, sales, price, deal, feat) with every odd store a real panel has
    (ODD_STORES): stores never featured, with one week or two, with a fixed price, always on
    deal, and every fifth store entering late and leaving early. Two segments, price
    coefficients -3 (even stores) and -1 (odd ones), deal +0.3 and feat +0.5, store levels around
    5, store prices around 2, sigma 0.2. Returns each store's segment (N,) in 0..1, stores s0..s{N-1}."""
    rng = np.random.default_rng(seed)
    segment, beta = np.arange(N) % 2, np.array([-3.0, -1.0])
    level = rng.normal(5.0, 0.5, N)
    odd = {i: what for what, stores in ODD_STORES.items() for i in stores}
    with open(path, "w", newline="") as out:
        out.write("store,week,sales,price,deal,feat\n")
        for i in range(N):
            weeks = np.arange(rng.integers(0, 10), rng.integers(20, T)) if i % 5 == 4 else np.arange(T)
            weeks = weeks[:1] if odd.get(i) == "one week" else weeks[:2] if odd.get(i) == "two weeks" else weeks
            price = 2.0 * np.exp(rng.normal(0.0, 0.15, len(weeks)))
            deal = (rng.random(len(weeks)) < 0.2).astype(float)
            feat = (rng.random(len(weeks)) < 0.15).astype(float)
            price[:] = 2.0 if odd.get(i) == "a fixed price" else price
            feat[:] = 0.0 if odd.get(i) == "never featured" else feat
            deal[:] = 1.0 if odd.get(i) == "always on deal" else deal
            y = level[i] + beta[segment[i]] * np.log(price) + 0.3 * deal + 0.5 * feat + rng.normal(0, 0.2, len(weeks))
            out.writelines(f"s{i},{w},{math.exp(v):.6g},{p:.4f},{d:g},{f:g}\n"
                           for w, v, p, d, f in zip(weeks, y, price, deal, feat))
    return segment


def write_stores(path, labels, z):
    """A stores file: store, z1..zQ, one row a store."""
    with open(path, "w", newline="") as out:
        out.write(",".join(["store"] + [f"z{j + 1}" for j in range(z.shape[1])]) + "\n")
        for label, row in zip(labels, z):
            out.write(label + "".join(f",{value:.10g}" for value in row) + "\n")


def write_csv(path, price, sales):
    """The course data's format: Price, Sales1..SalesN; a missing cell is left empty."""
    T, N = sales.shape
    with open(path, "w", newline="") as out:
        out.write(",".join(["Price"] + [f"Sales{i + 1}" for i in range(N)]) + "\n")
        for t in range(T):
            cells = ["" if np.isnan(s) else f"{s:.10g}" for s in sales[t]]
            out.write(f"{price[t]:.2f}," + ",".join(cells) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--stores", type=int, default=300, help="number of stores N")
    parser.add_argument("--weeks", type=int, default=52, help="number of weeks T")
    parser.add_argument("--theta", type=float, nargs="+", default=[v for row in DEFAULT_THETA for v in row],
                        metavar="V", help="alpha_1 beta_1 alpha_2 beta_2 ... (K segments)")
    parser.add_argument("--pi", type=float, nargs="+", default=list(DEFAULT_PI),
                        help="segment probabilities pi_1 .. pi_K")
    parser.add_argument("--missing", type=float, default=0.0, help="fraction of cells left empty")
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0],
                        help="noise sd: one value, or one per segment")
    parser.add_argument("--store-sd", type=float, default=0.0, help="sd of the store intercepts a_i")
    parser.add_argument("--price-sd", type=float, default=0.0,
                        help="sd of log store price around the week's price (0: one price a week)")
    parser.add_argument("--ar", type=float, default=0.0, help="AR(1) coefficient of each store's weekly errors")
    parser.add_argument("--gamma", type=float, nargs="+", metavar="V",
                        help="covariates of membership: gamma_c = (intercept, z1 .. zQ) for each of the K "
                             "segments, K (1 + Q) values; writes OUTPUT's name + _stores.csv (store, z1..zQ)")
    parser.add_argument("--long", action="store_true",
                        help="write a long file (store, week, sales, price; one row a store and week)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--output", default=os.path.join("data", "example.csv"), help="CSV to write")
    parser.add_argument("--truth", default=None,
                        help="JSON with the true theta, pi and segments (default: OUTPUT's name + _truth.json)")
    args = parser.parse_args(argv)
    if len(args.theta) % 2 or len(args.theta) // 2 != len(args.pi):
        parser.error(f"--theta needs two values (alpha, beta) for each of the {len(args.pi)} "
                     f"entries of --pi; got {len(args.theta)} values")
    try:
        if args.gamma and (len(args.gamma) % len(args.pi) or len(args.gamma) // len(args.pi) < 2):
            raise ValueError(f"--gamma needs 1 + Q values for each of the {len(args.pi)} segments (Q >= 1); "
                             f"got {len(args.gamma)} values")
        panel = simulate(args.stores, args.weeks, args.theta, args.pi, missing=args.missing, seed=args.seed,
                         sigma=args.sigma, store_sd=args.store_sd, price_sd=args.price_sd, gamma=args.gamma,
                         ar=args.ar)
    except ValueError as problem:
        parser.error(str(problem))
    if panel.price.ndim == 2 and not args.long:
        parser.error("--price-sd gives each store its own price: write a long file (--long)")
    truth = args.truth or os.path.splitext(args.output)[0] + "_truth.json"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    (write_long if args.long else write_csv)(args.output, panel.price, panel.sales)
    if panel.gamma is not None:
        labels = [f"S{i + 1}" if args.long else f"Sales{i + 1}" for i in range(args.stores)]
        write_stores(os.path.splitext(args.output)[0] + "_stores.csv", labels, panel.covariates)
    facts = {"stores": args.stores, "weeks": args.weeks, "seed": args.seed, "missing": args.missing,
             "theta": panel.theta.tolist(), "pi": panel.pi.tolist(), "sigma": panel.sigma.tolist(),
             "store_sd": args.store_sd, "price_sd": args.price_sd,
             "segment": (panel.segment + 1).tolist()}                 # segments numbered 1..K
    if panel.gamma is not None:
        facts["gamma"] = panel.gamma.tolist()
    with open(truth, "w") as out:
        out.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in facts.items()) + "\n}\n")
    print(f"wrote {args.output} ({args.weeks} weeks x {args.stores} stores) and {truth}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
