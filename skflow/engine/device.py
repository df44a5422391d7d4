"""Resolve a user's ``device`` argument into a :class:`torch.device`, and
how many rows to process at a time on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import cast

import torch

from skflow.engine.rng import noise_generator

EVAL_CHUNK = 65536
# On a CPU, chunks this small keep a network's activations in cache: scoring
# runs about 20% faster than EVAL_CHUNK rows at a time, sampling a MAF or an
# autoregressive NSF 20-30% faster (100,000-200,000 rows, one thread).
CPU_EVAL_CHUNK = 4096


_AUTOCAST_TYPES = ("cpu", "cuda", "mps", "xpu")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no argument, CUDA's; CPU's apart
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return device_type == "cuda" and torch.is_autocast_enabled()


@contextmanager
def plain_torch(training: bool = False) -> Iterator[None]:
    """Within the block (in this thread), torch's thread-local settings as
    the engine expects them, whatever the caller set around it: tensors made
    without a device on the CPU (not a default device from
    ``torch.set_default_device``), no autocast (which would compute a
    float32 model in bfloat16), and with ``training``, autograd on (a fit
    called inside the caller's ``torch.no_grad()`` or
    ``torch.inference_mode()``)."""
    with ExitStack() as stack:
        # (Only when needed: a device context intercepts every torch call in
        # Python, which made small fits 1.6x slower.)
        if torch.empty(0).device.type != "cpu":
            stack.enter_context(torch.device("cpu"))
        for device_type in _AUTOCAST_TYPES:
            if _autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        if training:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
        yield


def eval_chunk(device: torch.device) -> int:
    """Rows per pass on ``device`` when nothing is differentiated (scoring,
    sampling): bounds the memory of large inputs."""
    return CPU_EVAL_CHUNK if device.type == "cpu" else EVAL_CHUNK


def _out_of_memory(exc: BaseException) -> bool:
    # MPS reports exhaustion as a plain RuntimeError.
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


def in_chunks(n_rows: int, device: torch.device, step: Callable[[int, int], None]) -> None:
    """Call ``step(start, stop)`` over the rows ``0..n_rows`` in chunks of
    :func:`eval_chunk` rows. On a GPU, a chunk that runs out of memory is
    retried in halves, and the smaller size kept for the chunks after it:
    a chunk's activations grow with the flow (an image Glow needs gigabytes
    for 65,536 rows), which the fixed size cannot know. ``step`` must leave
    nothing half-done when it raises."""
    rows = eval_chunk(device)
    start = 0
    generator = noise_generator() if device.type != "cpu" else None
    while start < n_rows:
        stop = min(start + rows, n_rows)
        # A retried chunk draws the failed one's noise again (an augmented
        # flow's), as if the smaller chunks had been used from the start.
        state = generator.get_state() if generator is not None else None
        try:
            step(start, stop)
        except RuntimeError as exc:
            if device.type == "cpu" or stop - start == 1 or not _out_of_memory(exc):
                raise
            if generator is not None:
                generator.set_state(cast(torch.Tensor, state))
            rows = (stop - start) // 2
            # (Outside the handler, the failed chunk's tensors are freed.)
            continue
        start = stop


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _current_cuda() -> torch.device:
    # With its index: a bare "cuda" means whichever device is current when a
    # tensor is moved, which can differ between fitting and scoring (threads,
    # torch.cuda.device blocks) from where the flow's weights stay.
    return torch.device("cuda", torch.cuda.current_device())


def resolve_device(device: str | torch.device, dtype: torch.dtype = torch.float32) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a
    :class:`torch.device` into an available :class:`torch.device` that can
    compute in ``dtype``.

    ``"auto"`` picks CUDA, then MPS (float32 only: Apple's GPUs have no
    float64), then CPU. An explicit device that this machine does not have,
    or MPS with float64, raises ``ValueError`` rather than silently running
    somewhere else. A GPU without an index gets the current one's.

    Parameters
    ----------
    device : str or torch.device
        What the user asked for.
    dtype : torch.dtype, default=torch.float32
        The precision the device must compute in.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> import torch
    >>> from skflow.engine import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cuda", "mps", "cpu")
    True
    """
    float64 = dtype == torch.float64
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return _current_cuda()
        if _mps_available() and not float64:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device; use 'auto', 'cpu', "
            "'cuda', 'cuda:N', 'mps' or a torch.device."
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this "
                "machine; use device='auto' or device='cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
        if dev.index is None:
            return _current_cuda()
    elif dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"device={device!r} was requested but MPS is not available on this "
            "machine; use device='auto' or device='cpu'."
        )
    elif dev.type == "mps" and dev.index not in (None, 0):
        raise ValueError(f"device={device!r} does not exist: MPS has one device, 'mps'.")
    elif dev.type == "mps" and float64:
        raise ValueError(
            f"device={device!r} cannot compute in float64 (MPS has no float64); "
            "use dtype='float32', or device='cpu' for float64."
        )
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not supported; use 'auto', 'cpu', 'cuda' or 'mps'.")
    return dev
