"""DuckDB's reduction of large and Parquet files: the exact reader's sums and refusals, --by, --sums, ending well."""
import json
import os
import unittest
import unittest.mock

import numpy as np

from em_sales_tools import engine, files
from em_sales_tools.report import store_rows
from tests.common import (CommandLineCase, E, S, T, needs_duckdb, quietly)


class LargeFiles(CommandLineCase):
    def setUp(self):
        super().setUp()
        panel = S.simulate(50, 14, seed=5, sigma=0.5, price_sd=0.1, missing=0.1)
        S.write_long(self.path("long.csv"), panel.price, panel.sales,
                     x=np.random.default_rng(0).integers(0, 2, panel.sales.shape + (1,)), x_names=["deal"])
        self.exact = T.load(self.path("long.csv"), x=["deal"])

    def engine(self, path, **named):
        saved = files.ENGINE_FROM
        files.ENGINE_FROM = 0                        # every long file through the engine
        try:
            return T.load(path, **named)
        finally:
            files.ENGINE_FROM = saved

    def assert_same_sums(self, a, b):
        order = [b.stores.index(store) for store in a.stores]
        for field in a.sums._fields:
            np.testing.assert_allclose(getattr(b.sums, field)[order], getattr(a.sums, field), rtol=1e-12, atol=1e-9)

    @needs_duckdb
    def test_the_holdouts_blocks_are_the_exact_readers(self):
        """Block folds through DuckDB are the exact reader's, fold by fold: each store's weeks in
        time order (its rows shuffled, weeks missing), cut into contiguous blocks."""
        rng = np.random.default_rng(3)
        rows = [f"S{i},{t},{rng.uniform(5, 50):.6g},{rng.uniform(1, 2):.4f},{rng.integers(2)}"
                for i in range(12) for t in range(30) if rng.random() > 0.2 or t < 3]
        rng.shuffle(rows)
        path = self.write("shuffled.csv", "store,week,sales,price,deal\n" + "\n".join(rows) + "\n")
        for blocks in (True, False):
            exact = T.load(path, x=["deal"], folds=5, seed=1, blocks=blocks)
            reduced = self.engine(path, x=["deal"], folds=5, seed=1, blocks=blocks)
            if blocks:                            # random single weeks: DuckDB's hash draws other folds
                for a, b in zip(exact.folds, reduced.folds):
                    self.assert_same_sums(exact._replace(sums=a), reduced._replace(sums=b))
            total = exact.folds[0]
            for fold in exact.folds[1:]:
                total = E.Sums(*(x + y for x, y in zip(total, fold)))
            np.testing.assert_allclose(total.XtX, exact.sums.XtX, rtol=1e-12)    # the folds cover every week once

    @needs_duckdb
    def test_the_engine_gives_the_exact_readers_sums_from_csv_and_parquet(self):
        import duckdb
        reduced = self.engine(self.path("long.csv"), x=["deal"])
        self.assert_same_sums(self.exact, reduced)
        self.assertEqual((reduced.weeks, reduced.coefficients), (self.exact.weeks, self.exact.coefficients))
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{self.path('long.csv')}')) TO '{self.path('long.parquet')}' (FORMAT parquet)")
        self.assert_same_sums(self.exact, T.load(self.path("long.parquet"), x=["deal"]))
        order = [reduced.stores.index(store) for store in self.exact.stores]
        for field in ("pairs", "yy", "xx"):
            np.testing.assert_allclose(getattr(reduced.lags, field)[order], getattr(self.exact.lags, field), atol=1e-9)

    @needs_duckdb
    def test_a_bad_cell_is_named_by_line_and_column_or_by_store_and_week(self):
        import duckdb
        with open(self.path("long.csv")) as handle:
            lines = handle.read().splitlines()
        lines[5] = ",".join(lines[5].split(",")[:2] + ["-3"] + lines[5].split(",")[3:])
        self.write("bad.csv", "\n".join(lines) + "\n")
        with self.assertRaisesRegex(E.InputError, r"line 6, column 'sales': must be positive"):
            self.engine(self.path("bad.csv"), x=["deal"])
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{self.path('bad.csv')}')) TO '{self.path('bad.parquet')}' (FORMAT parquet)")
        store, week = lines[5].split(",")[:2]
        with self.assertRaisesRegex(E.InputError, f"store '{store}', week '{week}': 'sales' is not positive"):
            T.load(self.path("bad.parquet"), x=["deal"])
        self.write("twice.csv", "\n".join(lines[:1] + [lines[1], lines[1]] + lines[2:5]) + "\n")
        with self.assertRaisesRegex(E.InputError, "again|given twice"):
            self.engine(self.path("twice.csv"))

    def test_store_lines_are_what_json_writes(self):
        """results.json's store lines, formatted in one call, are json.dumps of the tidied store,
        whatever the numbers: 0, 1, near the subnormals, large, not finite (null), with and without
        priors."""
        W = np.random.default_rng(1).dirichlet([0.1, 0.1, 0.1], size=200)
        W[:6] = [[1.0, 0.0, 5e-324], [1e-300, 0.5, 0.5], [1e-17, 1 - 1e-17, 0.0], [2.2e-308, 0.25, 0.75],
                 [np.nan, np.inf, -0.0], [1.2345678912e8, 1e16, -np.inf]]
        stores = [{"store": label, "segment": int(w.argmax()) + 1, "posterior": w.tolist()}
                  for label, w in zip(['é"x', "S 2", 7] + [f"S{i}" for i in range(197)], W)]
        for store in stores[::3]:
            store["prior"] = [1 / 3, 0.5, 1 / 6]
        self.assertEqual(store_rows(stores), [json.dumps(E._tidy(store)) for store in stores])

    def test_the_engines_white_space_is_pythons(self):
        self.assertEqual(engine.WHITE_SPACE, "".join(chr(c) for c in range(0x110000) if chr(c).isspace()))

    @needs_duckdb
    def test_every_way_of_writing_weeks_and_labels_reads_as_the_exact_reader_reads_it(self):
        """The one pass proves weeks distinct only for integers; dates, spaced stores, padded
        weeks and weeks far apart take the second pass or the careful one, and read as exactly."""
        with open(self.path("long.csv")) as handle:
            header, *rows = [line.split(",") for line in handle.read().splitlines()]

        def variant(name, store=lambda s: s, week=lambda w: w, sales=lambda v, k: v):
            self.write(name, "\n".join([",".join(header)] + [",".join([store(r[0]), week(r[1]), sales(r[2], k)] + r[3:])
                                                             for k, r in enumerate(rows)]) + "\n")
            return self.path(name)
        paths = [variant("dates.csv", store=lambda s: f" {s}\t", week=lambda w: f"2020-{1 + int(w) // 28:02d}-{1 + int(w) % 28:02d}"),
                 variant("padded.csv", week=lambda w: w.zfill(3) if int(w) % 2 else str(int(w) * 1000)),
                 variant("numbers.csv", store=lambda s: s.lstrip("S")),
                 variant("na.csv", sales=lambda v, k: v if k < len(rows) - 1 else "NA")]
        import duckdb                                   # a Parquet file of integer stores and weeks
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{paths[2]}')) TO '{self.path('numbers.parquet')}' (FORMAT parquet)")
        for path in paths[:3] + [self.path("numbers.parquet")]:
            with self.subTest(path):
                exact, reduced = T.load(path if path.endswith(".csv") else paths[2], x=["deal"]), self.engine(path, x=["deal"])
                self.assert_same_sums(exact, reduced)
                self.assertEqual(reduced.weeks, exact.weeks)
        with self.assertRaisesRegex(E.InputError, rf"line {len(rows) + 1}, column 'sales'"):
            self.engine(paths[3], x=["deal"])
        connection, where = engine._engine_connection(paths[2], {}, ["deal"], None, self.folder.name)
        connection.close()                   # the first pass reads a CSV file's numbers as numbers, the careful one as text
        self.assertEqual([source.count("TRY_CAST") for careful in (False, True)
                          for source in [engine._engine_source(paths[2], where, None, careful)]], [0, 3])
        first, second = rows[0], next(r for r in rows if r[0] == rows[0][0] and r[1] != rows[0][1])
        for name, week, limit in (("twice", f"{first[1]} ", engine.REREAD_UP_TO), ("blank", "  ", 0)):
            self.write(f"{name}.csv", "\n".join(",".join([r[0], week] + r[2:] if r is second else r)
                                                 for r in [header] + rows) + "\n")
            with self.subTest(name), unittest.mock.patch.object(engine, "REREAD_UP_TO", limit):  # by line, or by store
                with self.assertRaisesRegex(E.InputError, "given twice|again" if name == "twice" else "missing"):
                    self.engine(self.path(f"{name}.csv"), x=["deal"])

    @needs_duckdb
    def test_odd_weeks_types_and_groups_read_as_the_exact_reader_reads_them(self):
        import duckdb
        head = "store,week,sales,price\n"
        far = self.write("far.csv", head + "A,9223372036854775807,10,1\nA,-1,11,2\nB,5,3,1.5\n")   # no overflow
        flat = self.write("flat.csv", head + "A,1,10,1e10\nA,2,11,10000000000.000002\nB,1,3,1e10\n")
        for path in (far, flat):
            with self.subTest(path):
                exact, reduced = T.load(path), self.engine(path)
                self.assert_same_sums(exact, reduced)
                self.assertEqual(reduced.weeks, exact.weeks)
        self.write("zero.csv", head + "A,-0.0,10,1\nA,1,11,2\nB,0.0,3,1.5\nB,1,4,2\n")
        duckdb.sql(f"COPY (SELECT store, CAST(week AS DOUBLE) AS week, sales, price FROM read_csv('{self.path('zero.csv')}', "
                   f"all_varchar = true)) TO '{self.path('zero.parquet')}' (FORMAT parquet)")
        self.assertEqual(T.load(self.path("zero.parquet")).weeks, 3)          # -0.0, 0.0 and 1.0: three labels
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{far}') WHERE false) TO '{self.path('none.parquet')}' (FORMAT parquet)")
        with self.assertRaisesRegex(E.InputError, "no data rows"):
            T.load(self.path("none.parquet"))
        duckdb.sql(f"COPY (SELECT *, sales > 10 AS deal FROM read_csv('{far}')) TO '{self.path('bool.parquet')}' "
                   "(FORMAT parquet)")
        with self.assertRaisesRegex(E.InputError, "'deal' is missing or not a number"):
            T.load(self.path("bool.parquet"), x=["deal"])
        spaced = self.write("spaced.csv", head + "A,7,10,1\nA,7 ,11,2\nB,5,3,1.5\nB,6,4,2\n")
        for seed in range(4):                            # with --holdout, a week written two ways is still one
            with self.subTest(seed=seed), unittest.mock.patch.object(engine, "REREAD_UP_TO", 0):
                with self.assertRaisesRegex(E.InputError, "given twice"):
                    self.engine(spaced, folds=5, seed=seed)
        for name, rows in (("blank.csv", "\n" + head + "A,1,10,1\nA,2,11,2\nB,1,3,1.5\n"),   # the header on line 2
                           ("spaces.csv", head + "A,1,10,1\nA,2,11,2\n   \nB,1,3,1.5\n"),   # a row of spaces and
                           ("commas.csv", head + "A,1,10,1\nA,2,11,2\n,,,\nB,1,3,1.5\n")):  # one of commas: skipped
            self.assert_same_sums(T.load(self.path(name), text=rows), self.engine(self.write(name, rows)))
        self.write("zeros.csv", head + "-0.0,1,10,1\n-0.0,2,11,2\n0.0,1,3,1.5\n0.0,2,4,2\n")     # two stores
        duckdb.sql(f"COPY (SELECT CAST(store AS DOUBLE) AS store, week, sales, price FROM read_csv('{self.path('zeros.csv')}', "
                   f"all_varchar = true)) TO '{self.path('zeros.parquet')}' (FORMAT parquet)")
        self.assertEqual(sorted(T.load(self.path("zeros.parquet")).stores), ["-0.0", "0.0"])
        text = ",Store,week,sales,price,store\n1,x,1,10,1,A\n2,x,2,11,2,A\n3,x,1,3,1.5,B\n"
        with unittest.mock.patch.object(engine, "REREAD_UP_TO", 0):          # an unnamed column, names alike but for case
            self.assert_same_sums(T.load(self.path("odd.csv"), columns={"store": "store"}, text=text),
                                  self.engine(self.write("odd.csv", text), columns={"store": "store"}))
        for argv in ([self.path("absent.parquet")], [self.path("absent.csv"), "--by", "brand"]):
            self.assert_refused("no such file", *argv, "--K", "1")          # one line, not a traceback
        self.write("groups.csv", "brand," + head + "X,A,1,10,1\nX,A,2,11,2\n,B,1,3,1.5\n")
        with self.assertRaisesRegex(E.InputError, "the brand is missing"):
            engine._engine_load(self.path("groups.csv"), {}, [], by="brand")

    @needs_duckdb
    def test_progress_while_the_engine_reads(self):
        import duckdb
        connection, seen = duckdb.connect(), []
        engine._watched(connection, "CREATE TABLE t AS SELECT i % 1000 AS store, sum(ln(i + 1)) FROM range(20000000) r(i) "
                   "GROUP BY store", seen.append, every=0.02)
        self.assertTrue(seen and all(0 <= share < 100 for share in seen), seen)
        self.assertEqual(connection.execute("SELECT count(*) FROM t").fetchone()[0], 1000)

    @needs_duckdb
    def test_sums_written_by_duckdb_give_the_same_fit(self):
        """The README's query, run by DuckDB, writes a table of sums; --sums fits from it what the
        program fits from the file itself."""
        import duckdb
        query = (f"COPY (SELECT store, count(*) AS n, sum(ln(sales)) AS sy, sum(ln(sales) * ln(sales)) AS syy, "
                 "sum(ln(price)) AS sx_log_price, sum(ln(price) * ln(sales)) AS sxy_log_price, "
                 "sum(ln(price) * ln(price)) AS sxx_log_price_log_price, sum(deal) AS sx_deal, "
                 "sum(deal * ln(sales)) AS sxy_deal, sum(ln(price) * deal) AS sxx_log_price_deal, "
                 f"sum(deal * deal) AS sxx_deal_deal FROM read_csv('{self.path('long.csv')}') GROUP BY store) "
                 f"TO '{self.path('sums.csv')}' (HEADER)")
        duckdb.sql(query)
        from_sums = quietly(T.analyse, self.path("sums.csv"), Ks=(2,), sums=True, sigma="common", store_effects=True)
        from_file = quietly(T.analyse, self.path("long.csv"), Ks=(2,), x=["deal"], sigma="common", store_effects=True)
        self.assertAlmostEqual(from_sums["models"][0]["loglik"], from_file["models"][0]["loglik"], delta=1e-8)
        np.testing.assert_allclose(from_sums["models"][0]["theta"], from_file["models"][0]["theta"], rtol=1e-7)
        self.assert_refused("a table of sums needs the column 'syy'", self.write("s.csv", "store,n,sy\na,3,4\n"), "--sums")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return
        code, out, err = self.run_main(self.path("sums.csv"), "--sums", "--K", "2", "--sigma", "common",
                                       "--plot", self.path("sums.svg"))   # no single price: the stores' spans
        self.assertEqual(code, 0, err)
        self.assertIn(b"Demand curves", open(self.path("sums.svg"), "rb").read())

    @needs_duckdb
    def test_by_fits_each_group_from_one_read(self):
        rows = ["brand,store,week,sales,price"]
        for brand, theta in (("A", ((10, -3.0), (10, -1.0))), ("B", ((9, -2.5), (9, -0.8)))):
            panel = S.simulate(30, 12, theta=theta, pi=(0.5, 0.5), seed=len(rows), sigma=0.4, price_sd=0.1)
            rows += [f"{brand},S{i},{t},{panel.sales[t, i]:.10g},{panel.price[t, i]:.2f}"
                     for i in range(30) for t in range(12)]
        rows += [f"C,S{i},{t},{10 + i + t},{1 + 0.1 * ((i + t) % 3)}" for i in range(3) for t in range(12)]
        self.write("brands.csv", "\n".join(rows) + "\n")
        code, out, err = self.run_main(self.path("brands.csv"), "--by", "brand", "--K", "1", "2", "--sigma", "common")
        self.assertEqual(code, 0, err)
        results = self.results()
        self.assertEqual(list(results["groups"]), ["A", "B", "C"])
        self.assertIn("stores", results["groups"]["C"]["error"])       # three stores for K = 2: said; A and B fitted
        self.write("a.csv", "\n".join(row.split(",", 1)[1] for row in rows if row.startswith(("A,", "brand"))) + "\n")
        alone = quietly(T.analyse, self.path("a.csv"), Ks=(1, 2), n_init=2, sigma="common")
        self.assertAlmostEqual(results["groups"]["A"]["models"][1]["loglik"], alone["models"][1]["loglik"], delta=1e-6)
        self.assertIn("===== brand = B =====", out)
        self.write("results.json", "earlier results\n")
        self.assert_refused("--by writes results.json", self.path("brands.csv"), "--by", "brand", "--segments",
                            self.path("s.csv"))


class EndingWell(CommandLineCase):
    @needs_duckdb
    def test_sigterm_while_duckdb_reads_interrupts_it_and_removes_its_folder(self):
        """The engine's query runs in a worker thread, so SIGTERM (timeout, systemd, Kubernetes)
        reaches the run at once: the query is interrupted, its database folder removed, exit 143."""
        import signal
        import tempfile
        import threading
        import time
        import duckdb
        duckdb.sql(f"COPY (SELECT range % 20 AS store, range // 20 AS week, 1 + random() AS sales, "
                   f"1 + range * 7 % 13 AS price FROM range(400)) TO '{self.path('p.parquet')}'")
        query = engine._store_query
        slow = lambda *args, **named: query(*args, **named) + " WHERE (SELECT count(*) FROM range(10000000000000)) > 0"
        spill = self.path("tmp")
        os.mkdir(spill)
        timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
        with unittest.mock.patch.object(engine, "_store_query", slow), unittest.mock.patch.object(tempfile, "tempdir", spill):
            timer.start()
            began = time.perf_counter()
            code, out, err = self.run_main(self.path("p.parquet"), "--quiet")
        timer.join()
        self.assertEqual((code, err), (143, "terminated\n"))
        self.assertLess(time.perf_counter() - began, 30)          # the query stopped, it did not run to its end
        self.assertEqual(os.listdir(spill), [])
        with open(self.output) as handle:
            self.assertEqual(handle.read(), "earlier results\n")
