"""Per-sample randomness that does not depend on the process or on the batch.

Under DDP every rank is seeded alike, so random choices drawn from the global generator
(token masks, drop-path, noise) would be the same on every rank, and a choice drawn for a
whole batch depends on which samples share it. microfm draws each sample's random choices from
that sample's own seed (run seed, epoch, dataset index), so that a 2-process run makes the same
choices for every sample as one process on the same global batch.

- :func:`derive_seed` mixes integers into a new 63-bit seed (``numpy.random.SeedSequence``);
- :func:`sample_generators` gives one ``torch.Generator`` per sample;
- :func:`sample_seeds` declares the seeds of the rows of the next forward passes, for layers
  that draw one number per row and call (:class:`microfm.backbones.drop_path.SampleDropPath`);
  :func:`draw_uniform` is what those layers call, and :func:`replayable` makes a function
  (an activation-checkpointed block) draw the same numbers when it is recomputed.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "derive_seed",
    "draw_uniform",
    "hash_uniform",
    "replayable",
    "sample_generators",
    "sample_seeds",
]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def derive_seed(*keys: int) -> int:
    """A seed in [0, 2**63) from integers (e.g. a sample's seed and a purpose); the same keys
    give the same seed everywhere.

    Example:
        >>> derive_seed(3, 1) == derive_seed(3, 1) != derive_seed(3, 2)
        True
    """
    words = [int(k) & _MASK64 for k in keys]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def sample_generators(
    seeds: Sequence[int], purpose: int, device: torch.device | str | None = None
) -> list[torch.Generator]:
    """One generator per sample, seeded by ``derive_seed(seed, purpose)``."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    return [torch.Generator(device=device).manual_seed(derive_seed(int(s), purpose)) for s in seeds]


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch shifts signed integers arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hash_uniform(seeds: torch.Tensor, counter: int) -> torch.Tensor:
    """Uniform numbers in [0, 1) (float32, one per seed) from a SplitMix64 hash of
    (seed, counter): the same on every device and for any batch the seeds are in."""
    x = seeds.to(torch.int64) + _signed((int(counter) + 1) * _GOLDEN)
    x = (x ^ _shift_right(x, 30)) * _M1
    x = (x ^ _shift_right(x, 27)) * _M2
    x = x ^ _shift_right(x, 31)
    return _shift_right(x, 40).to(torch.float32) / float(1 << 24)


@dataclass
class _State:
    seeds: torch.Tensor  # (B,) int64, one per row of the forward passes
    count: int = 0  # draws so far


_CURRENT: contextvars.ContextVar[_State | None] = contextvars.ContextVar(
    "microfm_sample_seeds", default=None
)


@contextmanager
def sample_seeds(seeds: Sequence[int] | torch.Tensor | None) -> Iterator[None]:
    """Within the block, layers that draw per-row randomness (drop-path) draw it from these
    seeds, one per row of the batches passed through the model, in call order. ``None``: the
    global generator, as timm does.

    Example:
        >>> with sample_seeds([1, 2]):
        ...     a = draw_uniform(torch.device("cpu"), 2)
        >>> with sample_seeds([9, 2]):
        ...     b = draw_uniform(torch.device("cpu"), 2)
        >>> bool(a[1] == b[1]) and bool(a[0] != b[0])
        True
    """
    state = None
    if seeds is not None:
        values = [int(s) & ((1 << 63) - 1) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
        state = _State(torch.tensor(values, dtype=torch.int64))
    token = _CURRENT.set(state)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def draw_uniform(device: torch.device, rows: int) -> torch.Tensor | None:
    """(rows,) uniform numbers from the current :func:`sample_seeds`, or None outside one."""
    state = _CURRENT.get()
    if state is None:
        return None
    if rows != len(state.seeds):
        raise ValueError(
            f"a batch of {rows} rows inside sample_seeds() with {len(state.seeds)} seeds"
        )
    state.count += 1
    return hash_uniform(state.seeds.to(device), state.count)


def replayable(fn: Callable) -> Callable:
    """``fn`` bound to the current :func:`sample_seeds` position: calling it again (an
    activation-checkpointed block recomputed in the backward pass, outside the context) draws
    the same numbers as the first call."""
    state = _CURRENT.get()
    if state is None:
        return fn
    start = state.count

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        inner = _State(state.seeds, start)
        token = _CURRENT.set(inner)
        try:
            return fn(*args, **kwargs)
        finally:
            _CURRENT.reset(token)
            state.count = max(state.count, inner.count)

    return wrapped
