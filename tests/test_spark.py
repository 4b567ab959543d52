"""Spark (em_sales_tools.spark), in local mode: every group's fit equals --by's, the sums equal the
exact reader's, a faulty row is named by group, store and week, a group that cannot be fitted
leaves the others fitted, the executors run the code the driver shipped them. One Spark session
for all (it takes about 13 s to start). pyspark missing: skipped; Java missing: failed, saying so."""
import contextlib
import io
import json
import os
import shutil
import tempfile
import unittest

import numpy as np

from tests.common import HERE, S, T, needs_duckdb, quietly

try:
    import pyspark  # noqa: F401
except ImportError:
    pyspark = None

GROUPS = {"A": ((10, -3.0), (10, -1.0)), "B": ((9, -2.5), (9, -0.8)), "C": ((9, -2.0), (8, -0.5))}
STORES, WEEKS = 24, 10
QUICK = {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",   # a test's small jobs:
         "spark.sql.codegen.wholeStage": "false",         # the JVM's quick compiler only, and no generated code
         "spark.sql.codegen.factoryMode": "NO_CODEGEN"}   # to compile (half the CPU time of the defaults)


def rows_of(groups, stores=STORES):
    """The long rows (brand, store, week, sales, price, deal) of a simulated panel a group."""
    rows = []
    for g, (brand, theta) in enumerate(groups.items()):
        panel = S.simulate(stores, WEEKS, theta=theta, pi=(0.5, 0.5), seed=g, sigma=0.4, price_sd=0.1)
        deal = np.random.default_rng(g).integers(0, 2, size=(WEEKS, stores))
        rows += [[brand, f"S{i}", str(t), f"{panel.sales[t, i]:.10g}", f"{panel.price[t, i]:.4f}", str(deal[t, i])]
                 for i in range(stores) for t in range(WEEKS)]
    return rows


def faulty_rows():
    """Groups that cannot be fitted, each for one fault of a row: D a sales value that is not a
    number, F a week given twice, G weeks written as dates with one given twice."""
    rows = rows_of({"D": GROUPS["B"], "F": GROUPS["C"]})
    for row in rows:
        if row[:3] == ["D", "S3", "5"]:
            row[3] = "n/a"
    rows.append(["F", "S1", "2", "100", "1.5", "0"])
    dated = rows_of({"G": GROUPS["A"]})
    for row in dated:
        row[2] = f"2020-03-{int(row[2]) + 10}"
    return rows + dated + [["G", "S7", "2020-03-15", "100", "1.5", "0"]]


def _has_duckdb():
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


@unittest.skipIf(pyspark is None, "pyspark is not installed (pip install pyspark pyarrow)")
class Spark(unittest.TestCase):
    """One session, and one fit of the groups (the clean file's and the faulty ones) that the
    tests read: Spark's jobs are what the suite's time goes to."""

    @classmethod
    def setUpClass(cls):
        if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
            raise AssertionError("Spark needs Java 17 or later, and none was found (JAVA_HOME or java on the PATH)")
        from em_sales_tools import spark
        cls.spark_module = spark
        cls.folder = tempfile.mkdtemp(prefix="em_sales_spark_test_")
        spread = rows_of({"H": GROUPS["B"]})                    # H: weeks 256 apart, residues that collide
        for row in spread:
            row[2] = str(256 * int(row[2]))
        rows = rows_of(GROUPS) + rows_of({"E": GROUPS["A"]}, stores=3) + spread   # E: too few stores for K = 2
        cls.path = os.path.join(cls.folder, "brands.csv")
        with open(cls.path, "w") as out:
            out.write("brand,store,week,sales,price,deal\n" + "".join(",".join(row) + "\n" for row in rows))
        here = os.getcwd()
        os.chdir(cls.folder)                     # the executors start here: they can import only what is shipped
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                cls.spark = spark.session("local[2]", QUICK)
        finally:
            os.chdir(here)
        import pandas as pd
        columns = ["brand", "store", "week", "sales", "price", "deal"]
        cls.frame = cls.spark.createDataFrame(pd.DataFrame(rows + faulty_rows(), columns=columns))
        cls.rows = [row.asDict() for row in spark.fit_groups(cls.frame, "brand", K=(1, 2), sigma="common",
                                                             x=["deal"]).collect()]
        cls.by = quietly(T.analyse, cls.path, Ks=(1, 2), by="brand", sigma="common", x=["deal"])["groups"] \
            if _has_duckdb() else None

    @classmethod
    def tearDownClass(cls):
        cls.spark.stop()
        shutil.rmtree(cls.folder, ignore_errors=True)

    @needs_duckdb
    def test_every_group_equals_by_on_one_machine(self):
        rows, by = self.rows, self.by
        self.assertEqual(sorted({row["brand"] for row in rows}), sorted(list(by) + ["D", "F", "G"]))
        for group in list(GROUPS) + ["H"]:
            mine = sorted((row for row in rows if row["brand"] == group), key=lambda row: row["K"])
            self.assertEqual([row["K"] for row in mine], [1, 2])
            for row, model in zip(mine, by[group]["models"]):
                self.assertIsNone(row["error"])
                self.assertAlmostEqual(row["loglik"], model["loglik"], delta=1e-8)
                self.assertAlmostEqual(row["bic"], model["bic"], delta=1e-7)
                self.assertEqual(row["n_params"], model["n_params"])
                np.testing.assert_allclose(json.loads(row["theta"]), model["theta"], rtol=0, atol=1e-8)
                np.testing.assert_allclose(json.loads(row["pi"]), model["pi"], rtol=0, atol=1e-8)
                np.testing.assert_allclose(json.loads(row["sigma"]), model["sigma"], rtol=0, atol=1e-8)
                self.assertEqual(row["best"], model["K"] == by[group]["best_K"])
        (failed,) = [row for row in rows if row["brand"] == "E"]     # too few stores: said, and the others fitted
        self.assertIn("stores", failed["error"])
        self.assertIsNone(failed["loglik"])
        self.assertIn("error", by["E"])

    def test_a_faulty_row_is_named_by_group_store_and_week_and_the_others_go_on(self):
        found = {row["brand"]: row for row in self.rows if row["K"] in (None, 2)}
        self.assertEqual(found["D"]["error"], "the DataFrame: brand 'D', store 'S3', week '5': 'sales' is missing or "
                                              "not a number")
        self.assertEqual(found["F"]["error"], "the DataFrame: brand 'F', store 'S1', week '2': given twice")
        self.assertEqual(found["G"]["error"], "the DataFrame: brand 'G', store 'S7', week '2020-03-15': given twice")
        for group in GROUPS:
            self.assertIsNone(found[group]["error"])
            self.assertLess(found[group]["loglik"], 0)

    def test_the_sums_are_the_exact_readers(self):
        spark = self.spark_module
        sums, _ = spark.reduced(self.frame, "brand", {"store": "store", "week": "week", "sales": "sales",
                                                       "price": "price"}, ["deal"])
        part = sums.where("__group = 'B'").toPandas()
        job = spark.Job("brand", (1,), None, None, None, ("deal",), "test")
        mine = spark._loaded(part, job)
        path = os.path.join(self.folder, "b.csv")
        with open(path, "w") as out:
            out.write("store,week,sales,price,deal\n" + "".join(",".join(row[1:]) + "\n" for row in rows_of(GROUPS)
                                                                 if row[0] == "B"))
        exact = T.load(path, x=["deal"])
        self.assertEqual(mine.stores, sorted(exact.stores))
        order = [exact.stores.index(store) for store in mine.stores]
        for name in ("n", "XtX", "Xty", "yty", "sx", "sy"):
            np.testing.assert_allclose(getattr(mine.sums, name), getattr(exact.sums, name)[order], rtol=1e-12, err_msg=name)
        self.assertEqual(mine.weeks, exact.weeks)
        np.testing.assert_allclose(mine.price_range, exact.price_range, rtol=1e-12)

    def test_the_readmes_sums_query_runs_in_spark_sql(self):
        """The README's query of per-store sums, run by Spark SQL, gives --sums what the exact
        reader gives from the rows."""
        with open(os.path.join(HERE, "README.md")) as handle:
            readme = handle.read()
        query = readme.split("```sql\n", 1)[1].split("```", 1)[0]
        self.spark.read.csv(self.path, header=True, inferSchema=True).where("brand = 'C'") \
            .createOrReplaceTempView("panel")
        sums = os.path.join(self.folder, "sums.csv")
        self.spark.sql(query).toPandas().to_csv(sums, index=False)
        rows = os.path.join(self.folder, "c.csv")
        with open(rows, "w") as out:
            out.write("store,week,sales,price\n" + "".join(",".join(row[1:5]) + "\n" for row in rows_of(GROUPS)
                                                            if row[0] == "C"))
        from_sums = quietly(T.analyse, sums, Ks=(2,), sums=True, sigma="common", store_effects=True)
        from_rows = quietly(T.analyse, rows, Ks=(2,), sigma="common", store_effects=True)
        self.assertAlmostEqual(from_sums["models"][0]["loglik"], from_rows["models"][0]["loglik"], delta=1e-7)

    @needs_duckdb
    def test_segments_are_by_s(self):
        rows = self.spark_module.segments_groups(self.frame, "brand", K=(1, 2), segments_K=2, sigma="common",
                                                 x=["deal"]).where("brand = 'A'").collect()
        by = quietly(T.analyse, self.path, Ks=(1, 2), by="brand", sigma="common", x=["deal"])["groups"]["A"]
        self.assertEqual(by["best_K"], 2)
        expected = {entry["store"]: entry for entry in by["store_segments"]}
        self.assertEqual(len(rows), STORES)
        for row in rows:
            self.assertEqual(row["segment"], expected[row["store"]]["segment"])
            np.testing.assert_allclose(row["posterior"], expected[row["store"]]["posterior"], atol=1e-7)

    def test_the_executors_run_the_code_the_driver_shipped(self):
        import pandas as pd

        def where(part):
            import em_sales
            import em_sales_tools
            return pd.DataFrame({"g": part["g"], "file": em_sales.__file__, "package": em_sales_tools.__file__})
        frame = self.spark.createDataFrame(pd.DataFrame({"g": ["a"]}))
        (row,) = frame.groupBy("g").applyInPandas(where, "g string, file string, package string").collect()
        self.assertFalse(row["file"].startswith(HERE), row["file"])
        self.assertTrue(row["package"].endswith(os.path.join("em_sales_tools.zip", "em_sales_tools", "__init__.py")),
                        row["package"])

    @needs_duckdb
    def test_the_command_line_writes_by_s_results(self):
        from em_sales_tools import cli
        out = os.path.join(self.folder, "spark.json")
        with contextlib.redirect_stdout(io.StringIO()) as said, contextlib.redirect_stderr(io.StringIO()) as err:
            code = self.spark_module.main([self.path, "--by", "brand", "--K", "1", "2", "--sigma", "common", "--x",
                                          "deal", "--output", out])
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("brand = A", said.getvalue())
        with open(out) as handle:
            groups = json.load(handle)["groups"]
        by = quietly(T.analyse, self.path, Ks=(1, 2), by="brand", sigma="common", x=["deal"])["groups"]
        self.assertEqual(sorted(groups), sorted(by))
        for group in GROUPS:
            for mine, model in zip(groups[group]["models"], by[group]["models"]):
                self.assertAlmostEqual(mine["loglik"], model["loglik"], delta=1e-6)   # results.json: 10 digits
        self.assertIn("error", groups["E"])
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(cli.main([self.path, "--engine", "spark", "--output", out]), 2)
        self.assertIn("--engine spark fits the groups of --by", err.getvalue())


if __name__ == "__main__":
    unittest.main()
