"""Long files, stores files and column names: read exactly, or refused with the line and the column."""
import unittest

import numpy as np

import test_em_sales
from em_sales_tools import files
from tests.common import (CommandLineCase, E, S, T, real_panel)


class LongFiles(CommandLineCase):
    def test_a_long_file_gives_the_estimates_of_the_wide_file(self):
        panel = S.simulate(N=40, T=20, missing=0.1, seed=8)
        S.write_csv(self.path("wide.csv"), panel.price, panel.sales)
        S.write_long(self.path("long.csv"), panel.price, panel.sales)
        results = []
        for name in ("wide.csv", "long.csv"):
            self.assertEqual(self.run_main(self.path(name), "--sigma", "segment", "--quiet")[0], 0)
            results.append(self.results())
        for a, b in zip(*(r["models"] for r in results)):
            self.assertAlmostEqual(a["loglik"], b["loglik"], places=7)
            np.testing.assert_allclose(a["theta"], b["theta"], rtol=1e-7)
        self.assertEqual([s["store"] for s in results[1]["store_segments"]], [f"S{i + 1}" for i in range(40)])

    def test_store_prices_and_regressors_from_a_long_file(self):
        """read_long + the grouped sums equal the T x N x P arrays of the same panel."""
        panel, rng = real_panel(3, N=30, T=15, store_sd=1.0)
        deal = (rng.random(panel.y.shape) < 0.3).astype(float)
        y = panel.y + 0.5 * deal
        S.write_long(self.path("long.csv"), panel.price, np.exp(y), deal[:, :, None], ["Deal"])
        loaded = T.load(self.path("long.csv"), x=["Deal"])
        wide = E._wide_sums(y, np.concatenate([panel.X, deal[:, :, None]], axis=2))
        for name, a, b in zip(E.Sums._fields, loaded.sums, wide):          # sales written to 10 digits
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=name)
        self.assertEqual(loaded.coefficients, ["intercept", "log price", "Deal"])

    def test_blank_lines_change_nothing_but_line_numbers(self):
        panel = S.simulate(N=20, T=10, missing=0.1, seed=2)
        S.write_long(self.path("long.csv"), panel.price, panel.sales)
        with open(self.path("long.csv")) as handle:
            lines = handle.read().splitlines()
        self.write("blank.csv", "\n".join(lines[:50] + ["", " , ,"] + lines[50:]) + "\n")
        plain, blank = T.read_long(self.path("long.csv")), T.read_long(self.path("blank.csv"))
        for name, a, b in zip(T.LongPanel._fields, plain, blank):
            if name == "lines":
                np.testing.assert_array_equal(b, a + 2 * (a > 50))
            elif isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
            else:
                self.assertEqual(a, b)

    def test_bad_long_files(self):
        head = "store,week,sales,price,deal\n"
        cases = {
            "dup.csv": (head + "a,1,10,2,0\na,2,11,3,1\nb,1,12,2,0\na,2,9,3,0\n",
                        "dup.csv: line 5, store 'a', week '2' again \\(first on line 3\\)"),
            "nosales.csv": (head + "a,1,10,2,0\na,2,,3,1\n", "line 3, column 'sales': is empty"),
            "zero.csv": (head + "a,1,10,2,0\na,2,0,3,1\n", "line 3, column 'sales': must be positive"),
            "price.csv": (head + "a,1,10,2,0\na,2,10,-3,1\n", "line 3, column 'price': must be positive"),
            "word.csv": (head + "a,1,10,2,0\na,2,ten,3,1\n", "line 3, column 'sales': 'ten' is not a number"),
            "short.csv": (head + "a,1,10,2,0\na,2,11\n", "line 3 has 3 cells, fewer than the header's 5"),
            "nostore.csv": (head + "a,1,10,2,0\n,2,11,3,1\n", "line 3, column 'store': the store is missing"),
            "flat.csv": (head + "a,1,10,2,1\na,2,11,3,1\n", "column 'deal' is 1 in every row"),
        }
        for name, (text, pattern) in cases.items():
            with self.subTest(name):
                self.assert_refused(pattern, self.write(name, text), "--K", "1", "--x", "deal")
        path = self.write("named.csv", "shop,week,sales,price\na,1,10,2\na,2,11,3\n")
        self.assert_refused("no column 'outlet' in the header \\(named by --store\\)", path, "--store", "outlet")
        self.assert_refused("no column 'deal' in the header \\(named by --x\\)", path, "--store", "shop", "--x", "deal")
        wide = self.write("wide.csv", "Price,A,B\n2,10,20\n3,11,21\n")
        self.assert_refused("--x needs a long file", wide, "--x", "deal")

    def test_store_effects_refuse_a_regressor_constant_within_stores(self):
        text = "store,week,sales,price,size\n" + "".join(
            f"{s},{t},{10 + s + t},{1 + (s * t) % 3},{s}\n" for s in range(1, 5) for t in range(1, 6))
        path = self.write("size.csv", text)
        self.assert_refused("size.csv: 'size' is constant within every store \\(or every store has one week\\): "
                            "the store effects absorb it", path, "--K", "1", "--x", "size", "--store-effects")


class ColumnNames(CommandLineCase):
    LONG = "store,week,sales,price,deal\n"

    def test_a_column_list_given_as_one_string_is_one_name(self):
        path = self.write("long.csv", self.LONG + "".join(f"{s},{t},{10 + ord(s) % 5 + t % 3},{2 + t % 2},{t % 2}\n"
                                                          for s in "abcd" for t in range(6)))
        self.assertEqual(T.load(path, x="deal").coefficients, ["intercept", "log price", "deal"])
        with self.assertRaisesRegex(ValueError, "x must be column names"):
            T.load(path, x=[3])


class NothingMisread(CommandLineCase, test_em_sales.NothingMisread):
    """The estimator's cases with the whole command line: long files read or refused with the
    place, and the package's options."""
    PLOT_REFUSED = None


class NoLostFile(CommandLineCase, test_em_sales.NoLostFile):
    PLOT_REFUSED = None


class HoldoutFolds(unittest.TestCase):
    def test_blocks_are_contiguous_disjoint_and_cover_each_stores_weeks(self):
        rng = np.random.default_rng(0)
        store = rng.integers(0, 7, 400)
        time = rng.permutation(400).astype(float)        # every row a distinct time, in no order
        fold = files.Folds(5).of(store, time)
        for i in range(7):
            mine = np.flatnonzero(store == i)
            in_time = fold[mine[np.argsort(time[mine])]]
            self.assertTrue(np.all(np.diff(in_time) >= 0), "a store's blocks follow its weeks in time")
            sizes = np.bincount(in_time, minlength=5)
            self.assertEqual(sizes.sum(), len(mine))
            self.assertLessEqual(sizes.max() - sizes.min(), 1)
        weeks = files.Folds(5, seed=2, blocks=False).of(store, time)
        np.testing.assert_array_equal(weeks, np.random.default_rng(2).integers(0, 5, 400))   # the draw of old
