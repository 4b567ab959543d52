"""Prices: does the 90% interval of a policy's gain cover the true gain? Simulated panels with
known parameters (two segments, store effects, store prices, sigma per segment), each fitted
(K = 2, store effects, sigma per segment) and priced with --draws 200; the true gain of the
recommended changes is computed from the true parameters, levels and segments:

    true profit_i(d) = (r_i (1 + d) - c_i) exp(a_i + alpha_c + beta_c log r_i + sigma_c^2 / 2) (1 + d)^beta_c.

    python bench/prices_coverage.py                 # 100 panels, about a minute
    python bench/prices_coverage.py --panels 20 --hold

Prints, for each policy, the share of panels whose interval covers the true gain, the median
interval width and the mean true and estimated gains (percent of today's profit).
"""
import argparse
import warnings

import numpy as np

import common  # noqa: F401  (puts this checkout first on the path)
import em_sales_tools as T
import simulate as S
from em_sales_tools import prices as PR

THETA = ((12.0, -3.0), (11.0, -1.7))


def panel(seed, N, weeks):
    """A simulated long panel (a DataFrame), its truth and each store's cost (0.6 of its median price)."""
    import pandas as pd
    p = S.simulate(N, weeks, THETA, (0.5, 0.5), seed=seed, sigma=(0.25, 0.4), store_sd=0.5, price_sd=0.15)
    regular = np.median(p.price, axis=0)
    cost = 0.6 * regular
    frame = pd.DataFrame({"store": np.repeat([f"s{i}" for i in range(N)], weeks), "week": np.tile(np.arange(weeks), N),
                          "sales": p.sales.T.ravel(), "price": p.price.T.ravel(), "cost": np.repeat(cost, weeks)})
    return frame, p, regular, cost


def true_gain(p, regular, cost, prices):
    """The true expected profit's change from regular to the given prices, over all stores, and
    today's true profit."""
    theta, sigma = np.asarray(THETA)[p.segment], p.sigma[p.segment]
    A = np.exp(p.store_effect + theta[:, 0] + theta[:, 1] * np.log(regular) + sigma ** 2 / 2)
    today = ((regular - cost) * A).sum()
    return ((prices - cost) * A * (prices / regular) ** theta[:, 1]).sum() - today, today


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panels", type=int, default=100)
    parser.add_argument("--stores", type=int, default=60)
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--hold", action="store_true", help="hold the chain's average price")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    policies = ("uniform", "segments", "stores")
    covered = {name: [] for name in policies}
    width, truth, estimate = ({name: [] for name in policies} for _ in range(3))
    for seed in range(args.panels):
        frame, p, regular, cost = panel(seed, args.stores, args.weeks)
        fit = T.fit_frame(frame, 2, store_effects=True, sigma="segment", n_init=5, seed=seed)
        result = PR.prices(fit, frame, cost="cost", draws=args.draws, seed=seed, hold_average_price=args.hold)
        order = [fit.stores.index(f"s{i}") for i in range(args.stores)]
        for name in policies:
            entry = result.results["policies"][name]
            prices = np.array(result.stores[f"price_{name}"])[order]
            gain, today = true_gain(p, regular, cost, prices)
            low, high = entry["gain_interval"]
            covered[name].append(low <= gain <= high)
            width[name].append(100 * (high - low) / today)
            truth[name].append(100 * gain / today)
            estimate[name].append(entry["gain_percent"])
    print(f"{args.panels} panels of {args.stores} stores x {args.weeks} weeks, K = 2, {args.draws} draws"
          + (", the average price held" if args.hold else "") + ":")
    print(common.table(["policy", "covered", "median width", "true gain", "estimated gain"],
                       [[name, f"{np.mean(covered[name]):.0%}", f"{np.median(width[name]):.2f}%",
                         f"{np.mean(truth[name]):+.2f}%", f"{np.mean(estimate[name]):+.2f}%"] for name in policies]))


if __name__ == "__main__":
    main()
