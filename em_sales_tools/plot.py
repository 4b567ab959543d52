"""The picture of a fit: each store's own elasticity and level coloured by its segment, the
segments' demand curves over the observed prices, and BIC against K. matplotlib is imported on
this path only."""
import io
import os

import numpy as np

from em_sales import InputError, _describe, _own_fits

PICTURES = ("png", "pdf", "svg")   # the formats --plot writes, by the file's extension


def _extension(path):
    """The picture format a file name asks for (PICTURES), or None."""
    extension = os.path.splitext(str(path))[1].lower().lstrip(".")
    return extension if extension in PICTURES else None


def plot(results, fits, data, K=None, format="png"):
    """The picture (bytes; format png, pdf or svg) of one K (default: BIC's choice): each store's own (elasticity, level)
    coloured by its segment, with the segment centres; the segments' demand curves over the
    observed prices; BIC against K. results, fits, data: what analyse's run gives (_analyse)."""
    plt = _pyplot()
    K = K or results["best_K"]
    fit = fits[K]
    names = fit.names
    price = names.index("log price")
    fits_own = _own_fits(data.sums.XtX, data.sums.Xty, data.sums.yty, data.sums.n)     # raw: with its level
    own = fits_own.b
    segment = fit.W.argmax(axis=1)
    colours = plt.get_cmap("tab10")(np.arange(K) % 10)
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.6))
    keep = fits_own.usable
    level = names.index("intercept") if "intercept" in names else None
    for c in range(K):
        mine = keep & (segment == c)
        left.scatter(own[mine, 1], own[mine, 0], s=14, color=colours[c], alpha=0.7,
                     label=f"segment {c + 1}: {int(mine.sum())} stores")
        if level is not None:
            left.scatter(fit.theta[c, price], fit.theta[c, level], s=160, marker="X", color=colours[c],
                         edgecolor="black", zorder=3)
        else:
            left.axvline(fit.theta[c, price], color=colours[c], linestyle="--")
    left.set(xlabel="store's own price elasticity (log price coefficient)", ylabel="store's own level (intercept)",
             title="Stores and segment centres (X)" if level is not None else "Stores and segment elasticities (--)")
    left.legend(fontsize=8)
    low, high = _log_price_span(data)
    grid = np.exp(np.linspace(low, high, 100))
    for c in range(K):
        if level is not None:
            curve, label = np.exp(fit.theta[c, level] + fit.theta[c, price] * np.log(grid)), "sales"
        else:                                    # store effects: relative to the middle price
            curve = 100 * np.exp(fit.theta[c, price] * (np.log(grid) - (low + high) / 2))
            label = "sales, % of sales at the middle price"
        middle.plot(grid, curve, color=colours[c], linewidth=2,
                    label=f"segment {c + 1}: elasticity {fit.theta[c, price]:.2f}")
    middle.set(xlabel="price", ylabel=label, title="Demand curves over the observed prices")
    middle.legend(fontsize=8)
    Ks = [m["K"] for m in results["models"]]
    right.plot(Ks, [m["bic"] for m in results["models"]], "o-", color="black")
    right.axvline(K, color="grey", linestyle=":")
    right.set(xlabel="K (segments)", ylabel="BIC (lower is better)", title=f"BIC against K: K = {K} drawn",
              xticks=Ks)
    figure.suptitle(f"{results['data']}: {_describe(results['settings'])}", fontsize=10)
    figure.tight_layout()
    picture = io.BytesIO()
    figure.savefig(picture, format=format, dpi=110)
    plt.close(figure)
    return picture.getvalue()


def _log_price_span(data):
    """The range of log price the demand curves are drawn over: the observed one, or for a file of
    sums (which holds no single price) each store's mean log price plus and minus two of its sds."""
    if np.all(np.isfinite(data.price_range)):
        return data.price_range
    sums, P = data.sums, data.sums.sx.shape[1]   # column 1 of X is log price
    n = np.maximum(sums.n, 1)
    mean = sums.sx[:, 1] / n
    sd = np.sqrt(np.maximum(sums.XtX[:, P + 1] / n - mean ** 2, 0))
    return float(np.min(mean - 2 * sd)), float(np.max(mean + 2 * sd))


def _pyplot():
    """matplotlib.pyplot without a screen, or InputError saying it is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed (pip install matplotlib)") from None
    return plt
