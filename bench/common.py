"""What the bench scripts share: where the repository and the data are, em_sales imported from
this checkout (or from another one's em_sales.py), the statistics of a panel under a model, seed
lists, and a plain-text table. Standard library and numpy only; nothing here measures anything.

The data are looked for in ../shared/data beside the repository root, then in the repository's
data/ (where students put the course file); they are never copied into the repository.
"""
import contextlib
import importlib.util
import os
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
DATA_FOLDERS = (os.path.join(os.path.dirname(REPO), "shared", "data"), os.path.join(REPO, "data"))
COURSE = "609948.csv"
ORANGE_JUICE = "orange_juice.csv"

if REPO not in sys.path:                 # em_sales and simulate of this checkout
    sys.path.insert(0, REPO)


def data_file(name, given=None):
    """The path of a data file: `given` if set, else the first of DATA_FOLDERS that holds `name`."""
    if given:
        if not os.path.exists(given):
            raise SystemExit(f"no such file: {given}")
        return given
    for folder in DATA_FOLDERS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise SystemExit(f"{name} not found in {' or '.join(DATA_FOLDERS)} (give its path with --data)")


def em_sales(path=None):
    """The em_sales module: this checkout's, or the one in the file `path` (another checkout's
    em_sales.py, loaded under its own module name so that two versions can be compared)."""
    if not path:
        import em_sales as module
        return module
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise SystemExit(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"em_sales_under_test_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def statistics_of(E, y, X, sigma=1.0, store_effects=False):
    """The per-store statistics of a wide panel (y T x N, X T x P or T x N x P) under a model."""
    return E._statistics(E._wide_sums(y, X), E._model(sigma, store_effects))


def search(E, stats, K, n_init=10, seed=0, previous=None, names=None, progress=None):
    """E's search (_search) at K with these settings, whichever version E is: a Search object since
    the split into the estimator and the package, separate arguments before it."""
    if hasattr(E, "Search"):
        return E._search(stats, K, E.Search(n_init, seed), names=names, previous=previous, progress=progress)
    return E._search(stats, K, n_init, seed, names=names, previous=previous, progress=progress)


def tools(E):
    """Where E's version keeps load, read_stores and analyse: in em_sales before the split, in
    the package em_sales_tools (of this checkout) after it."""
    if hasattr(E, "load"):
        return E
    import em_sales_tools
    return em_sales_tools


TRUE_K_THETA = ((10.0, -3.0), (10.0, -2.0), (10.0, -1.0))   # the true-K panels' three segments


def true_k_options(parser, panels):
    """The options of a bench on panels with a true K = 3 (true_k_panel): --panels, --stores,
    --weeks, --ar (the errors' AR(1)) and --n-init."""
    parser.add_argument("--panels", type=int, default=panels)
    parser.add_argument("--stores", type=int, default=90)
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--ar", type=float, default=0.5)
    parser.add_argument("--n-init", type=int, default=3)


@contextlib.contextmanager
def true_k_panel(args, seed, store_sd=0.5):
    """The path of a long CSV file (in a temporary folder, removed after) of a panel with a true
    K = 3: elasticities -3, -2, -1 in equal shares, sigma 0.5, store levels of sd store_sd, store
    prices, AR(1) errors args.ar; args.stores x args.weeks (true_k_options)."""
    import simulate
    panel = simulate.simulate(args.stores, args.weeks, theta=TRUE_K_THETA, pi=(1 / 3, 1 / 3, 1 / 3), seed=seed,
                              sigma=0.5, store_sd=store_sd, price_sd=0.1, ar=args.ar)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "p.csv")
        simulate.write_long(path, panel.price, panel.sales)
        yield path


def seeds(text):
    """A list of seeds from '0-9', '3' or '0,2,5'."""
    out = []
    for part in str(text).split(","):
        first, _, last = part.strip().partition("-")
        out += list(range(int(first), int(last or first) + 1))
    if not out:
        raise SystemExit(f"no seeds in {text!r}")
    return out


def bare_seeds(argv):
    """argv with a bare 'seeds=A-B' turned into '--seeds A-B' (both spellings are accepted)."""
    return [part for arg in argv
            for part in (["--seeds", arg[6:]] if arg.startswith("seeds=") else [arg])]


def table(headers, rows):
    """A plain-text table: a header line, a rule, one line a row; cells right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[j]) for row in cells]) for j, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
