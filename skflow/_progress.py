"""Training progress display for ``verbose > 0``.

tqdm's ``auto`` front end draws a widget in Jupyter notebooks and a text bar
in terminals, and degrades to plain carriage-return updates in log files, so
one code path serves every place a user fits a model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

EpochCallback = Callable[[int, float, "float | None"], None]


@contextmanager
def epoch_progress(verbose: int, max_iter: int, desc: str) -> Iterator[EpochCallback | None]:
    """Yield an ``on_epoch(epoch, train_loss, val_score)`` callback for the training loop.

    With ``verbose == 0`` it yields None (the training loop then reports
    nothing). With ``verbose >= 1`` the callback advances a progress bar over
    ``max_iter`` epochs showing the training and validation loss (the
    negative log-likelihood per row, or flow matching's regression loss, as in
    ``loss_curve_``); with
    ``verbose >= 2`` it also writes one line per epoch (kept in logs). The bar
    is closed however training ends: early stopping, a time budget, or an
    exception.

    Parameters
    ----------
    verbose : int
        Verbosity level of the estimator.
    max_iter : int
        Maximum number of epochs (the bar's total; early stopping ends it sooner).
    desc : str
        Label shown in front of the bar.

    Yields
    ------
    on_epoch : callable or None
        Callback taking ``(epoch, train_loss, val_score)``.
    """
    if not verbose:
        yield None
        return
    bar = tqdm(total=max_iter, desc=desc, unit="epoch", dynamic_ncols=True, leave=True)

    def on_epoch(epoch: int, train_loss: float, val_score: float | None) -> None:
        postfix = {"train loss": f"{train_loss:.4f}"}
        if val_score is not None:
            # Reported as a loss too, so both numbers read "lower is better".
            postfix["val loss"] = f"{-val_score:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(epoch - bar.n)
        if verbose >= 2:
            line = f"epoch {epoch:4d}  " + "  ".join(f"{k} {v}" for k, v in postfix.items())
            bar.write(line, file=sys.stderr)  # with the bar, off stdout (e.g. the CLI's CSV)

    try:
        yield on_epoch
    finally:
        bar.close()
