"""em_sales_tools: the analyst's package beside the estimator em_sales.py. Real panels (long CSV
and Parquet files of any size, tables of per-store sums, pandas), covariates of membership from a
stores file, how many segments (criteria, holdout, bootstrap, diagnostics), the report, the
picture and the command line. It imports em_sales, never the reverse (em_sales.main hands its
command line here where this package is importable).

    import em_sales_tools as T
    results = T.analyse("scanner.csv", Ks=(1, 2, 3), sigma="segment", store_effects=True, x=["deal", "feat"])
    print(T.report(results))
    fit = T.fit_frame(frame, 3, x=["deal", "feat"], store_effects=True)

    from em_sales_tools.prices import prices
    pricing = prices(fit, frame, margin="profit", zones="zones.csv")   # .results, .frame()
"""
from em_sales import __version__
from em_sales_tools.analysis import Choice, FrameFit, analyse, fit_frame, load
from em_sales_tools.covariates import Prediction, predict
from em_sales_tools.files import Loaded, LongPanel, Source, read_long, read_stores, read_sums
from em_sales_tools.plot import plot
from em_sales_tools.report import report

__all__ = ["analyse", "load", "fit_frame", "FrameFit", "Choice", "Source", "Loaded", "LongPanel", "read_long",
           "read_stores", "read_sums", "predict", "Prediction", "plot", "report", "__version__"]
