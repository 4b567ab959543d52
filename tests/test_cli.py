"""The analyst's command line on a real panel's odd stores, messages, progress, the picture and the README's examples."""
import os
import unittest
import unittest.mock
import warnings

import numpy as np

from em_sales_tools import choice
from em_sales_tools import cli
from em_sales_tools import analysis
import test_em_sales
from tests.common import (GOOD, HERE, CommandLineCase, E, S, T, data_file, pd_or_skip, quietly)


class OddStores(CommandLineCase):
    """Stores a real panel always has (never featured, one or two weeks, a fixed price, always on
    deal, entering late; simulate.odd_panel) fit under every model, with every diagnostic."""

    def test_every_odd_store_fits_under_every_model_and_is_named(self):
        truth = S.odd_panel(self.path("odd.csv"))
        regular = [i for i in range(len(truth)) if i > 8 and i % 5 != 4]
        for sigma in ("1", "common", "segment"):
            for effects in ([], ["--store-effects"]):
                code, out, err = self.run_main(self.path("odd.csv"), "--K", "1", "2", "3", "--sigma", sigma, *effects,
                                               "--x", "deal", "feat", "--holdout", "--bootstrap", "2")
                self.assertEqual(code, 0, err)
                got = self.results()
                self.assertEqual([m["K"] for m in got["models"]], [1, 2, 3])
                self.assertIn("loglik", got["holdout"])
                self.assertEqual(got["holdout"]["unscored"], 1 if effects else 1)      # s4's one week, in its fold
                self.assertEqual(got["bootstrap"]["B"], 2)
                self.assertNotIn("failed", got)
                self.assertIn("4 in which feat never changes ('s0', 's1', 's2', 's3'); 2 with no more weeks than "
                              "coefficients ('s4', 's5'); 1 in which log price never changes ('s6'); 3 in which deal "
                              "never changes ('s7', 's8', 's", err)
                if effects and sigma != "1":     # the segments of the truth
                    beta = [row[0] for row in got["models"][1]["theta"]]
                    np.testing.assert_allclose(beta, [-3.0, -1.0], atol=0.15)
                    W = np.array([store["posterior"] for store in self.stores_at(2)])
                    np.testing.assert_array_equal(W[regular].argmax(axis=1), truth[regular])
                    self.assertIn("60 stores (2 of them with no information on the price effect: see the notes)", out)
                    self.assertIn("2 stores carry no information on the price effect under this model and stay in the "
                                  "fit, placed by what their other weeks say: 's4' (a single week), 's6' (its price "
                                  "never changes)", err)
                    self.assertEqual(got["uninformative"], [{"store": "s4", "why": "a single week"},
                                                            {"store": "s6", "why": "its price never changes"}])
        z = np.column_stack([truth + np.random.default_rng(2).normal(0, 0.5, len(truth))])
        S.write_stores(self.path("stores.csv"), [f"s{i}" for i in range(len(truth))], z)
        code, out, err = self.run_main(self.path("odd.csv"), "--K", "1", "2", "--sigma", "segment", "--store-effects",
                                       "--x", "deal", "feat", "--stores", self.path("stores.csv"), "--covariates", "z1")
        self.assertEqual(code, 0, err)
        self.assertGreater(self.results()["models"][1]["without_covariates"]["lr"], 0)

    def stores_at(self, K):
        """The store lines of results.json refitted at K (--segments-K needs --segments)."""
        code, out, err = self.run_main(self.path("odd.csv"), "--K", str(K), "--sigma", "common", "--store-effects",
                                       "--x", "deal", "feat", "--n-init", "5")
        self.assertEqual(code, 0, err)
        return self.results()["store_segments"]

    def test_a_store_without_its_own_regression_is_left_out_of_the_diagnostics_alone(self):
        """_own_fits: a store whose promotion never changes has no own regression (it used to be
        inverted: 'Singular matrix' stopped every run); the others' are least squares."""
        rng = np.random.default_rng(4)
        X = np.stack([np.ones((12, 5)), rng.normal(0, 1, (12, 5)), rng.integers(0, 2, (12, 5))], axis=-1)
        X[:, 2, 2] = 0.0                                      # never featured
        X[:, 3, 2] = 1.0                                      # always featured: collinear with the intercept
        y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(0, 0.1, (12, 5))
        y[2:, 4] = np.nan                                     # two weeks
        sums = E._wide_sums(y, X)
        own = E._own_fits(sums.XtX, sums.Xty, sums.yty, sums.n)
        self.assertEqual(own.usable.tolist(), [True, True, False, False, False])
        self.assertEqual((own.flat.tolist(), own.collinear.tolist(), own.short.tolist()),
                         ([-1, -1, 2, -1, -1], [False, False, False, True, False], [False, False, False, False, True]))
        for i in (0, 1):
            b = np.linalg.lstsq(X[:, i], y[:, i], rcond=None)[0]
            np.testing.assert_allclose(own.b[i], b, rtol=1e-10)
            s2 = ((y[:, i] - X[:, i] @ b) ** 2).sum() / 9
            self.assertAlmostEqual(own.s2[i], s2, delta=1e-12)
            np.testing.assert_allclose(own.var[i], s2 * np.diag(np.linalg.inv(X[:, i].T @ X[:, i])), rtol=1e-9)
        for i in (2, 3, 4):                              # the minimum-norm solution, for the search's starts
            A = sums.XtX[i].reshape(3, 3)
            np.testing.assert_allclose(own.b[i], np.linalg.pinv(A) @ sums.Xty[i], rtol=1e-8, atol=1e-10)
        self.assertTrue(np.isnan(own.var[2:]).all() and np.isnan(own.s2[2:]).all())
        fit = quietly(E.Estimate, 2, y, X, sigma="common", n_init=2, seed=0)
        self.assertTrue(0 <= choice._captured(fit) <= 1)           # every store: its own least squares, minimum-norm
        self.assertEqual(choice._not_credible(fit), {})            # two stores with their own regression: too few
        more = quietly(E.Estimate, 2, np.column_stack([y, y[:, :2] + 0.3]), np.concatenate([X, X[:, :2]], axis=1),
                       sigma="common", n_init=2, seed=0)
        self.assertTrue(0 <= choice._captured(more) <= 1)

    def test_a_failing_diagnostic_leaves_the_fit_delivered_and_says_so(self):
        panel = S.simulate(N=30, T=12, seed=3)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        with unittest.mock.patch.object(analysis, "_autocorrelation", side_effect=np.linalg.LinAlgError("Singular matrix")):
            code, out, err = self.run_main(self.path("p.csv"), "--K", "1", "2", "--sigma", "common")
        self.assertEqual(code, 0, err)
        got = self.results()
        self.assertEqual(got["models"][1]["failed"], {"residual autocorrelation": "LinAlgError: Singular matrix"})
        self.assertIsNone(got["models"][1]["autocorrelation"])
        self.assertIn("warning: K = 2: the residual autocorrelation could not be computed (LinAlgError: Singular "
                      "matrix); the fit itself is delivered: please report it with the command", err)

    def test_a_failure_of_the_program_is_not_a_refusal_of_the_input(self):
        panel = S.simulate(N=30, T=12, seed=3)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        with unittest.mock.patch.object(E, "_search", side_effect=np.linalg.LinAlgError("Singular matrix")):
            code, out, err = self.run_main(self.path("p.csv"), "--K", "2", "3", "--sigma", "common")
        self.assertEqual((code, out), (3, ""))
        self.assertEqual(err, "error: internal error while fitting K = 2 (LinAlgError: Singular matrix): please "
                              "report it with the command\n")
        with open(self.output) as handle:
            self.assertEqual(handle.read(), "earlier results\n")
        with self.assertRaises(E.InputError):                # the project's own refusals have their own type
            E.Estimate(5, panel.y, panel.X, sigma="nope")

    def test_K_1_with_covariates_is_the_model_without_them(self):
        panel = S.simulate(N=40, T=12, theta=((10, -3.0), (10, -1.0)), pi=(0.5, 0.5), sigma=0.5,
                           gamma=((0, 1.5), (0, 0)), seed=5)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        S.write_stores(self.path("s.csv"), [f"Sales{i + 1}" for i in range(40)], panel.covariates)
        code, out, err = self.run_main(self.path("p.csv"), "--K", "1", "2", "--sigma", "common", "--stores",
                                       self.path("s.csv"), "--covariates", "z1")
        self.assertEqual(code, 0, err)
        one = self.results()["models"][0]
        plain = quietly(E.Estimate, 1, panel.y, panel.X, sigma="common")
        self.assertAlmostEqual(one["loglik"], plain.loglik, delta=1e-6)
        self.assertEqual((one["gamma"], one["without_covariates"]["lr"], one["without_covariates"]["df"]),
                         ([[0.0, 0.0]], 0.0, 0))
        self.assertEqual(one["n_params"], 3)
        self.assertIn("covariates of membership: with one segment there is no membership to model, so K = 1 is the "
                      "model without them (likelihood ratio 0 on 0 df)", out)
        frame = pd_or_skip(self).DataFrame({"store": np.repeat([f"S{i}" for i in range(40)], 12),
                                            "week": np.tile(np.arange(12), 40), "sales": panel.sales.T.ravel(),
                                            "price": np.tile(panel.price, 40)})
        stores = pd_or_skip(self).DataFrame({"store": [f"S{i}" for i in range(40)], "z1": panel.covariates[:, 0]})
        fit = quietly(T.fit_frame, frame, 1, stores=stores, covariates=["z1"], sigma="common")
        self.assertAlmostEqual(fit.loglik, plain.loglik, delta=1e-6)
        self.assertEqual(fit.prior.shape, (40, 1))

    def test_the_wide_price_column_is_found_by_its_header(self):
        panel = S.simulate(N=6, T=10, seed=2)
        S.write_csv(self.path("first.csv"), panel.price, panel.sales)
        with open(self.path("first.csv")) as handle:
            rows = [line.rstrip("\n").split(",") for line in handle]
        for name, order in (("price_usd", [1, 2, 3, 0, 4, 5, 6]), ("Unit Price", [1, 0, 2, 3, 4, 5, 6])):
            moved = [[row[j] for j in order] for row in rows]
            moved[0][order.index(0)] = name
            self.write("moved.csv", "\n".join(",".join(row) for row in moved) + "\n")
            for path in (self.path("first.csv"), self.path("moved.csv")):
                self.assertEqual(self.run_main(path, "--K", "1", "2", "--sigma", "common")[0], 0)
                got = self.results()
                if path.endswith("first.csv"):
                    first = got
            self.assertEqual([m["loglik"] for m in got["models"]], [m["loglik"] for m in first["models"]])
            self.assertEqual(got["stores"], 6)
            self.assertEqual(sorted(s["store"] for s in got["store_segments"]), [f"Sales{i + 1}" for i in range(6)])
        self.write("results.json", "earlier results\n")
        twice = [row[:] for row in rows]
        twice[0][3] = "Price2"
        self.assert_refused("line 1: columns 'Price' and 'Price2' are both named like a price",
                            self.write("twice.csv", "\n".join(",".join(row) for row in twice) + "\n"), "--K", "1")
        week = [["Week" if k == 0 else str(k)] + row for k, row in enumerate(rows)]
        week = [[row[1], row[0]] + row[2:] for row in week]
        self.assert_refused("column 'Week' is named like a week, date or index, not a store",
                            self.write("week.csv", "\n".join(",".join(row) for row in week) + "\n"), "--K", "1")

    def test_messages_say_what_to_do(self):
        long = self.write("long.csv", "StoreID,Week,Sales,Price,deal,feat\n1,1,10,2,0,1\n1,2,12,1.5,1,0\n")
        self.assert_refused("this looks like a long file .*--store StoreID", long, "--x", "deal", "feat")
        odd = self.write("odd.csv", "shop_nr,wk,units,cost,deal,feat\n1,1,10,2,0,1\n1,2,12,1.5,1,0\n")
        self.assert_refused("odd.csv: --x needs a long file .*: name its store column with --store COL", odd, "--x", "deal")
        self.assert_refused("long.csv: x must be column names; got \\[''\\]", long, "--store", "StoreID", "--x", "")
        self.assert_refused("--plot .*o.xlsx: the picture is written as PNG, PDF or SVG", long, "--plot", self.path("o.xlsx"))
        panel = S.simulate(N=20, T=10, seed=1)
        fit = quietly(E.Estimate, 2, panel.y, panel.X, store_effects=True, sigma="common", n_init=2, seed=0)
        np.testing.assert_allclose(fit.log_sales(panel.X), panel.X[:, 1:] @ fit.theta.T)      # the fit's own X
        self.assertEqual(T.predict(fit, None, panel.y[:, :3], panel.X).posterior.shape, (3, 2))  # the same X
        for bad in (panel.X[:, 1:], panel.X[:, :, None]):
            with self.assertRaisesRegex(E.InputError, "X must be T x P with the 2 columns of the X the fit was "
                                                      "estimated from .*; got shape"):
                fit.log_sales(bad)
        with self.assertRaisesRegex(E.InputError, "X must be T x P or T x M x P with the 2 columns"):
            T.predict(fit, None, panel.y[:, :3], np.column_stack([panel.X, panel.X]))

    def test_segments_of_one_or_two_stores_are_flagged(self):
        panel = S.simulate(N=40, T=15, theta=((10, -3.0), (10, -1.0), (14, -0.2)), pi=(0.5, 0.45, 0.05), seed=11,
                           sigma=0.3)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        code, out, err = self.run_main(self.path("p.csv"), "--K", "3", "--sigma", "common")
        self.assertEqual(code, 0, err)
        few = int((panel.segment == 2).sum())
        self.assertEqual(few, 2)
        self.assertRegex(out, rf"\n +3 .* {few} !\n")
        self.assertIn(f"! segment 3 is most likely for {few} stores ({few}.0 stores' weight): a segment of one or two "
                      "stores describes those stores, not a segment of the market", out)
        self.assertEqual(self.results()["models"][0]["few_stores"], {"3": {"stores": 2, "weight": 2.0}})
        self.assertIn("One K fitted (K = 3, BIC", out)
        self.assertNotIn("BIC chooses", out)

    def test_the_bootstrap_says_its_smallest_p_and_its_assumption(self):
        panel = S.simulate(N=30, T=20, theta=((10, -3.0), (10, -1.0)), pi=(0.5, 0.5), sigma=0.5, ar=0.6, seed=4)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        seen = []
        results = quietly(T.analyse, self.path("p.csv"), Ks=(1, 2), n_init=2, sigma="common", bootstrap=4,
                          progress=seen.append)
        text = T.report(results)
        self.assertIn("Bootstrap test (4 panels simulated from each K fit", text)
        self.assertIn("the smallest p that 4 panels can give is 0.200)", text)
        self.assertRegex(text, r"panels simulated from each K fit, with AR\(1\) errors over the stores' own weeks "
                               r"\(rho 0\.[4-9]\d\)")
        boot = results["bootstrap"]                      # as from a file the engine reduced: no rows
        boot["tests"][0]["weeks"] = "independent"
        self.assertIn("with independent weeks though the residuals are autocorrelated within stores (rho = 0.", T.report(results))
        self.assertIn("read its p-values as too small", T.report(results))
        self.assertIn(E.Progress("panels", 1, 4, 4, "bootstrap K = 1 against 2"), seen)
        progress, lines = cli._Progress(False), []
        progress.start -= 10
        with unittest.mock.patch("sys.stderr", new=unittest.mock.Mock(write=lines.append)):
            progress(E.Progress("panels", 1, 4, 4, "bootstrap K = 1 against 2"))
        progress.close()
        self.assertIn("bootstrap K = 1 against 2: 4 of 4 panels done", "".join(lines))

    def test_the_time_left_grows_with_a_start_slower_than_its_predecessors(self):
        now = [0.0]
        progress = cli._Progress(True)
        progress.clock = lambda: now[0]
        progress.start = progress.last = 0.0
        for done, at in ((0, 0.0), (1, 1.0), (2, 2.0)):
            now[0] = at
            progress(E.Progress("starts", 3, done, 10))
        now[0] = 2.5
        self.assertEqual(progress._line(2.5), "2 of 10 starts done, about 8 s left for its starts")
        self.assertEqual(progress._line(32.0), "2 of 10 starts done; the one running now has taken 30 s, the others "
                         "1 s each: at least 210 s more after it")
        progress.close()


class ReadmeExamples(unittest.TestCase):
    """The README's Python examples run as written, in a folder whose data/ holds the data sets
    where a user puts them; an example whose data set is absent is skipped."""

    def test_the_python_examples_run_as_written(self):
        import contextlib
        import io
        import re
        import tempfile
        with open(os.path.join(HERE, "README.md")) as handle:
            blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
        self.assertGreaterEqual(len(blocks), 2)
        ran = 0
        with tempfile.TemporaryDirectory() as folder:
            os.mkdir(os.path.join(folder, "data"))
            for block in blocks:
                needed = re.findall(r"\"data/([\w.]+)\"", block)
                if not all(os.path.exists(data_file(name)) for name in needed):
                    continue
                for name in needed:
                    if not os.path.exists(os.path.join(folder, "data", name)):
                        os.symlink(os.path.abspath(data_file(name)), os.path.join(folder, "data", name))
                here = os.getcwd()
                os.chdir(folder)
                try:
                    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
                finally:
                    os.chdir(here)
                ran += 1
        if not ran:
            self.skipTest("the README's examples need the course or orange-juice data, absent here")


class Progress(CommandLineCase):
    def test_progress_is_reported_within_a_K(self):
        seen = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            T.analyse(self.write("sales.csv", GOOD), Ks=(1, 2), n_init=3, progress=seen.append)
        starts = [(event.K, event.done, event.total) for event in seen if event.kind == "starts"]
        self.assertEqual(starts, [(1, 0, 1), (2, 0, 3), (2, 1, 3), (2, 2, 3), (2, 3, 3)])     # K = 1 is one run
        self.assertIn(E.Progress("moves", 2), seen)                      # a round of moves
        self.assertTrue(any("the data reject sigma = 1" in str(w.message) for w in caught))


class Picture(CommandLineCase):
    def test_picture(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("matplotlib is not installed")
        panel = S.simulate(N=60, T=20, seed=8)
        S.write_csv(self.path("p.csv"), panel.price, panel.sales)
        code, out, err = self.run_main(self.path("p.csv"), "--K", "1", "2", "3", "--plot", self.path("p.png"))
        self.assertEqual(code, 0, err)
        with open(self.path("p.png"), "rb") as handle:
            picture = handle.read()
        self.assertEqual(picture[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(picture), 20_000)
        pd = pd_or_skip(self)
        N, weeks = panel.sales.shape[1], panel.sales.shape[0]
        frame = pd.DataFrame({"store": np.repeat(np.arange(N), weeks), "week": np.tile(np.arange(weeks), N),
                              "sales": panel.sales.T.ravel(), "price": np.broadcast_to(panel.price.reshape(weeks, -1),
                                                                                       (weeks, N)).T.ravel()})
        fit = quietly(T.fit_frame, frame, 2)
        self.assertTrue(fit.plot().startswith(b"\x89PNG"))
        with self.assertRaisesRegex(E.InputError, "png, pdf, svg"):
            fit.plot(self.path("p.jpg"))
        self.assertFalse(os.path.exists(self.path("p.jpg")))


class CommittedResults(CommandLineCase):
    """The committed example's results.json is what the package's command line writes, every key."""
    test_committed_results_are_what_the_default_run_writes = \
        test_em_sales.CommandLine.test_committed_results_are_what_the_default_run_writes
