"""Neural networks used as conditioners: plain MLPs and masked MLPs (MADE)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn


def _zero_last(linear: nn.Linear | nn.Conv2d) -> None:
    # A zero output layer makes every flow layer start as the identity (or a
    # fixed elementwise map), which keeps the first steps of training stable.
    nn.init.zeros_(linear.weight)
    # (The bias is None only for bias=False, which no caller passes.)
    nn.init.zeros_(cast(Tensor, linear.bias))


def check_permutation(order: Tensor, n: int, what: str) -> None:
    """Raise ``ValueError`` unless ``order`` is a permutation of ``0 .. n-1``
    (a repeated index would make a layer silently lose a coordinate)."""
    if order.dim() != 1 or not bool(torch.equal(torch.sort(order).values.cpu(), torch.arange(n))):
        raise ValueError(
            f"{what} must be a permutation of 0..{n - 1} (each index once), got {order.tolist()}."
        )


def _activation(cls: type[nn.Module]) -> nn.Module:
    # The default ReLU in place: it always overwrites a fresh layer output
    # that nothing else reads, which saves an allocation per hidden layer
    # (7% of scoring a 5-layer MAF on a CPU). Other activations as given: some
    # in-place versions lack forward-mode derivatives (torch.func.jvp).
    return nn.ReLU(inplace=True) if cls is nn.ReLU else cls()


class MLP(nn.Sequential):
    """Fully connected network ``in_features -> hidden_units -> out_features``.

    A zero ``in_features`` is allowed (a coupling layer on one column has
    nothing to condition on): the network then learns a constant output.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_units: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        self.constant_input = in_features == 0
        layers: list[nn.Module] = []
        width = max(in_features, 1)
        for h in hidden_units:
            layers += [nn.Linear(width, h), _activation(activation)]
            width = h
        last = nn.Linear(width, out_features)
        _zero_last(last)
        super().__init__(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        if self.constant_input:
            x = x.new_ones(x.shape[:-1] + (1,))
        return _chain(self, x)


def _chain(layers: nn.Sequential, x: Tensor) -> Tensor:
    """``layers(x)`` through each layer's ``forward`` directly: skipping
    ``nn.Module.__call__`` (hook dispatch) for these small layers saves about
    3% of a small flow's training step on CPU. Hooks on the individual layers
    therefore do not fire; hooks on the network itself do."""
    for layer in layers:
        x = layer.forward(x)
    return x


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015).

    Output ``[..., i, :]`` (``n_params`` values for feature ``i``) depends only
    on the features before ``i`` in ``order`` (a permutation of ``0 .. D-1``;
    default the natural order). Stacked flows alternate orders in the masks
    rather than permuting the data between layers, which saves a copy per
    layer. Hidden degrees are assigned cyclically, so the masks are
    deterministic and every hidden unit is used.
    """

    def __init__(
        self,
        n_features: int,
        n_params: int,
        hidden_units: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
        order: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_params = n_params
        if order is not None:
            check_permutation(order, n_features, "MADE order")
        # Degree of feature order[k] is k + 1.
        in_deg = torch.empty(n_features, dtype=torch.long)
        in_deg[order if order is not None else torch.arange(n_features)] = torch.arange(
            1, n_features + 1
        )
        # Hidden degrees in 1..D-1 (0 when D == 1, i.e. no input connection).
        span = max(n_features - 1, 1)
        low = min(n_features - 1, 1)
        layers: list[nn.Module] = []
        prev = in_deg
        for h in hidden_units:
            deg = torch.arange(h) % span + low
            layers += [MaskedLinear(deg[:, None] >= prev[None, :]), _activation(activation)]
            prev = deg
        out_deg = in_deg.repeat_interleave(n_params)
        last = MaskedLinear(out_deg[:, None] > prev[None, :])
        _zero_last(last)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = _chain(self.net, x)
        return out.view(*x.shape[:-1], self.n_features, self.n_params)

    @property
    def n_weights(self) -> int:
        """Entries of the weight matrices, masked ones included: the
        multiply-adds of one pass per row."""
        return sum(cast(MaskedLinear, layer).weight.numel() for layer in list(self.net)[0::2])

    def autoregress(self, solve: Callable[[Tensor, Tensor], Tensor], like: Tensor) -> Tensor:
        """Parameters of every feature when the features are only known one
        step at a time: ``solve(features, params)`` gives the values
        ``(..., k)`` of the ``k`` features indexed by ``features`` from their
        parameters ``(..., k, n_params)``; ``like`` gives the batch shape,
        dtype and device.

        Each hidden unit is computed once, in the step where the inputs it
        sees are known, so the whole solve costs about one network pass of
        arithmetic instead of the D passes of the plain fixed-point iteration.
        Returns the parameters, ``like.shape + (n_params,)``.
        """
        linears = cast(list[MaskedLinear], list(self.net)[0::2])
        activations = list(self.net)[1::2]
        plan = self._plan(linears)
        perms, features, unpermute = plan.indices(like.device)
        # Weights with units (and inputs) in the order they become known, cut
        # into the blocks of units each step computes: a step then reads a
        # prefix of the previous layer.
        weights = [
            (linear.weight * linear.mask).index_select(0, rows).index_select(1, cols).split(sizes)
            for linear, rows, cols, sizes in zip(
                linears, perms[1:], perms[:-1], plan.sizes, strict=True
            )
        ]
        biases = [
            linear.bias.index_select(0, rows).split(sizes)
            for linear, rows, sizes in zip(linears, perms[1:], plan.sizes, strict=True)
        ]
        known = _Columns(like, self.n_features)
        hidden = [_Columns(like, linear.out_features) for linear in linears[:-1]]
        params = []
        for step, solved in enumerate(features):
            prev = known.value
            for i, activation in enumerate(activations):
                if plan.sizes[i][step]:
                    w = weights[i][step][:, : prev.shape[-1]].contiguous()
                    hidden[i].append(activation(nn.functional.linear(prev, w, biases[i][step])))
                prev = hidden[i].value
            w = weights[-1][step][:, : prev.shape[-1]].contiguous()
            out = nn.functional.linear(prev, w, biases[-1][step])
            params.append(out.view(*like.shape[:-1], len(solved), self.n_params))
            known.append(solve(solved, params[-1]))
        return torch.cat(params, -2).index_select(-2, unpermute)

    def _plan(self, linears: list[MaskedLinear]) -> _AutoregressivePlan:
        # Derived from the masks, and rebuilt if they change: replaced
        # (load_state_dict(assign=True), .to()) or written into (a loaded
        # state_dict bumps their version counters; tensors made in inference
        # mode have none, and nothing writes into those).
        masks = [linear.mask for linear in linears]
        versions = [None if m.is_inference() else m._version for m in masks]
        cached = self.__dict__.get("_plan_cache")
        if (
            cached is None
            or any(a is not b for a, b in zip(cached[0], masks, strict=True))
            or cached[1] != versions
        ):
            # (Outside inference mode, which scoring and sampling enter: the
            # plan's index tensors must serve later autograd calls too.)
            with torch.inference_mode(False):
                plan = _AutoregressivePlan.from_masks(
                    [m.detach().cpu().bool() for m in masks], self.n_params
                )
            cached = self.__dict__["_plan_cache"] = (masks, versions, plan)
        return cached[2]

    def __getstate__(self) -> dict:
        # Copies and pickles rebuild the plan where they are used: it may hold
        # index tensors on a GPU that the unpickling machine lacks.
        state = dict(super().__getstate__())
        state.pop("_plan_cache", None)
        return state


class _Columns:
    """Columns appended block by block. Without autograd they are written into
    one buffer; with it they are concatenated, since autograd needs the
    tensors an earlier step read to stay unchanged."""

    def __init__(self, like: Tensor, width: int) -> None:
        self._buffer = (
            None if torch.is_grad_enabled() else like.new_empty(like.shape[:-1] + (width,))
        )
        self._width = 0
        self.value = like.new_empty(like.shape[:-1] + (0,))

    def append(self, block: Tensor) -> None:
        stop = self._width + block.shape[-1]
        if self._buffer is None:
            self.value = torch.cat([self.value, block], -1)
        else:
            self._buffer[..., self._width : stop] = block
            self.value = self._buffer[..., :stop]
        self._width = stop


class _OnDevice(NamedTuple):
    perms: list[Tensor]
    solved: list[Tensor]
    unpermute: Tensor  # the inverse of perms[0]


@dataclass
class _AutoregressivePlan:
    """When each unit of a MADE can first be computed, solving features in
    order. ``perms[0]`` orders the input features by the step that solves
    them, ``perms[l]`` the units of layer ``l`` (output rows last) by the step
    in which all their inputs are known; ``sizes[l - 1][t]`` is how many units
    of layer ``l`` step ``t`` computes (a last entry counts those no step
    needs), and ``solved[t]`` the features it solves. There are at most D
    steps: fewer when several features become solvable at once (hidden
    layers narrower than D leave some degrees without units)."""

    perms: list[Tensor]
    sizes: list[list[int]]
    solved: list[Tensor]
    # The index tensors moved to each device once, not per call.
    _on_device: dict[torch.device, _OnDevice] = field(default_factory=dict)

    def indices(self, device: torch.device) -> _OnDevice:
        if device not in self._on_device:
            with torch.inference_mode(False):  # (as in MADE._plan)
                self._on_device[device] = _OnDevice(
                    [p.to(device) for p in self.perms],
                    [f.to(device) for f in self.solved],
                    self.perms[0].argsort().to(device),
                )
        return self._on_device[device]

    @classmethod
    def from_masks(cls, masks: list[Tensor], n_params: int) -> _AutoregressivePlan:
        n_features = masks[0].shape[1]
        # The step in which each input, unit and output row becomes known.
        never = n_features
        known = [torch.full((n_features,), never)]
        known += [torch.full((m.shape[0],), never) for m in masks]
        solved: list[Tensor] = []
        while (known[0] == never).any():
            step = len(solved)
            for layer, mask in enumerate(masks, start=1):
                waiting = (mask & (known[layer - 1] == never)).any(1)
                known[layer][(known[layer] == never) & ~waiting] = step
            rows_known = (known[-1] < never).view(n_features, n_params).all(1)
            new = (rows_known & (known[0] == never)).nonzero().flatten()
            if new.numel() == 0:
                raise ValueError("The masks are not autoregressive: no feature can be solved next.")
            known[0][new] = step
            solved.append(new)
        # Stable sorts keep a step's features, and their output rows, in index
        # order; units never needed (known after the last step) sort last.
        perms = [k.argsort(stable=True) for k in known]
        counts = [torch.bincount(k, minlength=never + 1) for k in known[1:]]
        sizes = [c[: len(solved)].tolist() + [int(c[len(solved) :].sum())] for c in counts]
        return cls(perms, sizes, solved)


class ConvNet(nn.Module):
    """Convolutional conditioner of an image coupling layer (Glow's ``NN()``).

    Maps flat rows of an ``(in_channels, height, width)`` image to flat rows
    holding ``n_params`` values for each coordinate of an ``(out_channels,
    height, width)`` image, ordered ``(channel, row, column, param)`` as
    :class:`~skflow.engine.transforms.Coupling` expects. 3x3 convolutions
    first and last, 1x1 in between; the last one starts at zero, so the
    coupling starts as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_params: int,
        hidden_channels: Sequence[int],
        height: int,
        width: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.in_shape = (in_channels, height, width)
        self.out_shape = (out_channels, n_params, height, width)
        layers: list[nn.Module] = []
        width_in = in_channels
        for i, h in enumerate(hidden_channels):
            kernel = 3 if i == 0 else 1
            layers += [nn.Conv2d(width_in, h, kernel, padding=kernel // 2), _activation(activation)]
            width_in = h
        last = nn.Conv2d(width_in, out_channels * n_params, 3, padding=1)
        _zero_last(last)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x.view(x.shape[0], *self.in_shape))
        return out.view(x.shape[0], *self.out_shape).permute(0, 1, 3, 4, 2).flatten(1)
