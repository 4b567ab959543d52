"""From segments to prices: the optimum of a known demand, a brute-force grid oracle for every
policy with and without the average-price constraint, the policies' nesting and bounds, refused
costs and margins, and regressors entered by their logarithm."""
import itertools

import numpy as np

from em_sales_tools import prices as PR
from tests.common import CommandLineCase, S, T, needs_duckdb, pd_or_skip, quietly


def long_panel(path, seed=1, N=12, T=24, beta=(-3.0, -1.6), pi=(0.5, 0.5), cost_share=0.5, common=False, zones=None):
    """A long file of N stores in len(beta) segments (price coefficients beta), store levels,
    store prices around 2 (or one price a week with common), a deal, a cost column at cost_share
    of each store's regular price, and a margin column (percent) that gives the same cost (with
    common, one price and one week of deal for every store, and one cost)."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(len(beta), N, p=pi)
    level = rng.normal(5.0, 0.3, N)
    week_price = 2.0 * np.exp(rng.normal(0, 0.1, T))
    week_deal = rng.random(T) < 0.2                          # with common prices, the same weeks on deal
    rows = ["store,week,sales,price,deal,cost,margin"]
    for i in range(N):
        regular = 2.0 * (1 + 0.1 * (i % 3)) if not common else 2.0
        for t in range(T):
            deal = int(week_deal[t] if common else rng.random() < 0.2)
            price = (week_price[t] if common else regular * np.exp(rng.normal(0, 0.1))) * (0.9 if deal else 1.0)
            y = level[i] + beta[segment[i]] * np.log(price) + 0.3 * deal + rng.normal(0, 0.2)
            cost = cost_share * (2.0 if common else regular)
            rows.append(f"s{i},{t},{np.exp(y):.6f},{price:.6f},{deal},{cost:.6f},{100 * (1 - cost / price):.6f}")
    with open(path, "w") as out:
        out.write("\n".join(rows) + "\n")
    if zones:
        with open(zones, "w") as out:
            out.write("store,zone\n" + "".join(f"s{i},{'A' if i < N // 2 else 'B'}\n" for i in range(N)))
    return segment


def slsqp(profit, groups, G, weights=None, starts=8):
    """The best of scipy's SLSQP from several starts: the policy's profit over one change a group
    within +-0.1, with weights the average-price constraint sum_i w_i d_group(i) = 0."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(0)
    constraint = [] if weights is None else [{"type": "eq", "fun": lambda D: weights @ D[groups]}]
    best = -np.inf
    for start in [np.zeros(G)] + [rng.uniform(-0.1, 0.1, G) for _ in range(starts - 1)]:
        found = minimize(lambda D: -profit(D[groups][None])[0], start, method="SLSQP", bounds=[(-0.1, 0.1)] * G,
                         constraints=constraint, options={"ftol": 1e-14, "maxiter": 500})
        if found.success and (weights is None or abs(weights @ found.x[groups]) < 1e-9 * weights.sum()):
            best = max(best, -found.fun)
    return best


class Prices(CommandLineCase):
    def fit(self, path, K, **named):
        return quietly(T.fit_frame, pd_or_skip(self).read_csv(path), K, x=["deal"], store_effects=True,
                       sigma="common", n_init=4, **named)

    def test_a_constant_elasticity_prices_at_c_beta_over_1_plus_beta(self):
        """One segment, constant elasticity beta: whatever the store's level, its profit
        (p - c) A p^beta is largest at p = c beta / (1 + beta); a common price and cost give it
        for every policy, and each store's own cost for the stores' policy."""
        path = self.path("one.csv")
        long_panel(path, N=10, beta=(-3.0,), pi=(1.0,), cost_share=0.5, common=True)
        fit = self.fit(path, 1)
        beta = fit.theta[0, fit._stats.price]
        result = quietly(PR.prices, fit, path, cost="cost", max_change=0.8, draws=0)
        optimum = 1.0 * beta / (1 + beta)                    # cost 0.5 x 2.0
        for name in ("uniform", "segments", "stores"):
            np.testing.assert_allclose(result.stores[f"price_{name}"], optimum, rtol=1e-6)
        long_panel(path, seed=2, N=10, beta=(-3.0,), pi=(1.0,), cost_share=0.5)
        fit = self.fit(path, 1)
        beta = fit.theta[0, fit._stats.price]
        result = quietly(PR.prices, fit, path, margin="margin", max_change=0.8, draws=0)
        cost = np.array(result.stores["cost"])
        np.testing.assert_allclose(result.stores["price_stores"], cost * beta / (1 + beta), rtol=1e-6)

    def test_every_policy_reaches_a_brute_force_grid_oracle(self):
        """Small panels: each policy's expected profit is at least the best of a fine grid of its
        changes (with the average price held, the last group's change solves the constraint), and
        the changes agree with the grid's best to its step."""
        path, zones = self.path("small.csv"), self.path("zones.csv")
        long_panel(path, seed=3, N=5, beta=(-3.2, -1.4), pi=(0.5, 0.5), zones=zones)
        fit = self.fit(path, 2)
        regular = PR._aligned(PR.regular_weeks(path, ["deal"], PR.Settings(cost="cost")), fit.stores)
        A = (fit.W * np.exp(PR._bases(fit, fit.data, regular, fit.theta, fit.sigma)))[None]
        beta = fit.theta[:, fit._stats.price][None]
        weights = (PR._sales(A, beta, np.zeros((1, 5))) * regular.price)[0]

        def profit(d):                               # d (M, N): each store's change
            A_, beta_ = np.broadcast_to(A, (len(d),) + A.shape[1:]), np.broadcast_to(beta, (len(d), 2))
            return PR._profits(A_, beta_, regular.price, regular.cost, d).sum(axis=1)
        for hold in (False, True):
            with self.subTest(hold=hold):
                ours, stores = PR.price_policies(fit, fit.data, regular, PR.Settings(cost="cost", hold_average_price=hold,
                                                                                    draws=0),
                                                 PR.read_zones(zones, fit.stores))
                for name, groups in (("uniform", [0] * 5), ("segments", fit.W.argmax(axis=1)),
                                     ("zones", [0, 0, 1, 1, 1]), ("stores", range(5))):
                    groups = np.unique(groups, return_inverse=True)[1]
                    G = groups.max() + 1
                    points = np.linspace(-0.1, 0.1, {1: 4001, 2: 801}.get(G - hold, 21 if hold else 801))
                    if not hold and G > 2:           # one change a store: the stores' profits add up
                        best = base = profit(np.zeros((1, 5)))[0]
                        for i in range(5):
                            d = np.zeros((len(points), 5))
                            d[:, i] = points
                            best += profit(d).max() - base
                    else:
                        free = G - 1 if hold else G
                        grid = np.array(list(itertools.product(points, repeat=free))) if free else np.zeros((1, 0))
                        if hold:                     # the last group's change from the constraint
                            w = np.bincount(groups, weights, G)
                            last = -(grid @ w[:free]) / w[free]
                            grid = np.column_stack([grid, last])[np.abs(last) <= 0.1 + 1e-12]
                        best = profit(grid[:, groups]).max()
                    self.assertGreaterEqual(ours["policies"][name]["profit"], best - 1e-8 * abs(best), name)
                    if G - hold <= 2:                # a fine grid: the optimum is within its step
                        self.assertLessEqual(ours["policies"][name]["profit"], best + 1e-4 * abs(best), name)
                    found = slsqp(profit, groups, G, weights if hold else None)      # a second oracle: scipy
                    self.assertGreaterEqual(ours["policies"][name]["profit"], found - 1e-8 * abs(found), name)
                    changes = np.array(stores[f"price_{name}"]) / regular.price - 1
                    self.assertTrue(np.all(np.abs(changes) <= 0.1 + 1e-12), name)
                    if hold:
                        self.assertAlmostEqual(float(weights @ changes), 0.0, delta=1e-9 * weights.sum())

    def test_policies_nest_respect_their_bounds_and_say_so(self):
        path, zones = self.path("panel.csv"), self.path("zones.csv")
        long_panel(path, seed=4, N=16, beta=(-3.0, -0.8), zones=zones)
        code, out, err = self.run_main(path, "--K", "1", "2", "--sigma", "common", "--store-effects", "--x", "deal",
                                       "--cost", "cost", "--zones", zones, "--draws", "40", "--prices",
                                       self.path("prices.csv"))
        self.assertEqual(code, 0, err)
        pricing = self.results()["pricing"]
        profit = {name: entry["profit"] for name, entry in pricing["policies"].items()}
        self.assertGreaterEqual(profit["stores"], profit["segments"] - 1e-9)
        self.assertGreaterEqual(profit["segments"], profit["uniform"] - 1e-9)
        self.assertGreaterEqual(profit["uniform"], profit["status_quo"] - 1e-9)
        self.assertGreaterEqual(profit["stores"], profit["zones"] - 1e-9)
        segments = pricing["policies"]["segments"]
        self.assertIn("segment 2", segments["bound"])               # elasticity -0.8: no interior optimum
        self.assertAlmostEqual(segments["changes"]["segment 2"], 0.1)
        self.assertEqual(set(segments), {"profit", "gain", "gain_percent", "changes", "bound", "gain_interval",
                                         "gain_percent_interval", "p_gain", "change_intervals"})
        low, high = segments["gain_interval"]
        self.assertTrue(low <= segments["gain"] <= high and 0 <= segments["p_gain"] <= 1)
        self.assertIn("Prices (K = 2;", out)
        self.assertIn("an elasticity of -1 or above has no interior optimum", out)
        self.assertIn("A shopper lost to a price rise is counted as lost", out)
        with open(self.path("prices.csv")) as handle:
            rows = [line.split(",") for line in handle.read().splitlines()]
        self.assertEqual(rows[0], ["store", "segment", "zone", "regular_price", "cost", "price_uniform",
                                   "price_segments", "price_zones", "price_stores", "profit_change_stores"])
        self.assertEqual(len(rows), 17)
        for row in rows[1:]:
            regular, price = float(row[3]), float(row[8])
            self.assertLessEqual(abs(price / regular - 1), 0.1 + 1e-6)

    def test_bad_costs_and_margins_are_refused_with_line_and_column(self):
        path = self.path("panel.csv")
        long_panel(path, seed=5, N=6, T=8)
        with open(path) as handle:
            lines = handle.read().splitlines()
        for name, column, value, pattern in (
                ("missing.csv", 5, "", "line 4, column 'cost': is empty"),
                ("text.csv", 5, "n/a", "line 4, column 'cost': 'n/a' is not a number"),
                ("zero.csv", 5, "0", "line 4, column 'cost': a unit cost must be above 0; got 0"),
                ("hundred.csv", 6, "100", "line 4, column 'margin': a margin of 100% of the price leaves no cost")):
            with self.subTest(name):
                bad = [line.split(",") for line in lines]
                bad[3][column] = value
                self.write(name, "\n".join(",".join(row) for row in bad) + "\n")
                role = "--cost" if column == 5 else "--margin"
                self.assert_refused(f"{name}: {pattern}", self.path(name), "--K", "1", "--sigma", "common",
                                    "--store-effects", role, "cost" if column == 5 else "margin")
        self.write("results.json", "earlier results\n")
        loss = [line.split(",") for line in lines]
        loss[3][6] = "-20"                           # a loss leader: a negative margin is a cost above the price
        self.write("loss.csv", "\n".join(",".join(row) for row in loss) + "\n")
        code, out, err = self.run_main(self.path("loss.csv"), "--K", "1", "--sigma", "common", "--margin", "margin",
                                       "--draws", "0")
        self.assertEqual(code, 0, err)
        self.write("results.json", "earlier results\n")
        self.assert_refused("--cost COL and --margin COL each give the unit cost", path, "--cost", "cost",
                            "--margin", "margin")
        self.assert_refused("--prices, --zones and --hold-average-price set prices, which need the unit cost", path,
                            "--prices", self.path("p.csv"))


class LogRegressors(CommandLineCase):
    def test_a_column_enters_by_its_logarithm(self):
        panel = S.simulate(20, 10, seed=3, sigma=0.5, price_sd=0.1)
        other = np.exp(np.random.default_rng(1).normal(0, 0.2, panel.sales.shape + (1,)))
        S.write_long(self.path("long.csv"), panel.price, panel.sales, x=other, x_names=["p5"])
        data = T.load(self.path("long.csv"), x=["log(p5)"])
        self.assertEqual(data.coefficients, ["intercept", "log price", "log(p5)"])
        plain = T.load(self.path("long.csv"), x=["p5"])
        np.testing.assert_allclose(data.sums.sx[:, 2], np.bincount(np.repeat(np.arange(20), 10),
                                                                   np.log(other[:, :, 0].T.ravel()), 20), atol=1e-8)
        self.assertFalse(np.allclose(data.sums.sx[:, 2], plain.sums.sx[:, 2]))
        with open(self.path("long.csv")) as handle:
            lines = handle.read().splitlines()
        row = lines[3].split(",")
        row[4] = "0"
        lines[3] = ",".join(row)
        self.write("zero.csv", "\n".join(lines) + "\n")
        self.assert_refused("zero.csv: line 4, column 'p5': must be positive to take its log; got 0", self.path("zero.csv"),
                            "--x", "log(p5)", "--K", "1")

    @needs_duckdb
    def test_the_engine_takes_the_same_logarithm(self):
        from em_sales_tools import files
        panel = S.simulate(20, 10, seed=3, sigma=0.5, price_sd=0.1)
        other = np.exp(np.random.default_rng(1).normal(0, 0.2, panel.sales.shape + (1,)))
        S.write_long(self.path("long.csv"), panel.price, panel.sales, x=other, x_names=["p5"])
        exact = T.load(self.path("long.csv"), x=["log(p5)"])
        saved, files.ENGINE_FROM = files.ENGINE_FROM, 0
        try:
            engine = T.load(self.path("long.csv"), x=["log(p5)"])
        finally:
            files.ENGINE_FROM = saved
        order = [engine.stores.index(store) for store in exact.stores]
        for field in exact.sums._fields:
            np.testing.assert_allclose(getattr(engine.sums, field)[order], getattr(exact.sums, field), rtol=1e-12, atol=1e-12)
