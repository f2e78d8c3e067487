"""Per-client privacy accounting that survives rounds and process restarts.

The whole federated history of a client is one list of Opacus accountant events
``(noise_multiplier, sample_rate, steps)``: DP-SGD steps at ``(σ, q)`` and one
``(σ_s, 1.0, 1)`` per released noised group-count histogram. That list is the ledger's
only state (stored in ``context.state``, written to ``results.json``). ε is computed on
the history grouped by ``(σ, q)`` (composition is order-independent): identical for RDP,
equal within 1e-11 for PRV and several times faster.

Opacus 1.6 PRV at ``q == 1`` evaluates ``np.log(1 - q) = -inf``, the correct limit, so ε
is right (within PRV's eps_error 0.01 of dp-accounting's PLD), but numpy emits thousands
of "divide by zero" RuntimeWarnings per call; only there we use
``np.errstate(divide="ignore")`` (a numpy float flag, not a warnings filter), so Opacus'
own warnings still surface.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

Event = tuple[float, float, int]

VALID_ACCOUNTANTS = ("rdp", "prv")


def default_delta(num_examples: int) -> float:
    """Return δ = 1 / (10·n), strictly below 1/n, for ``n = num_examples >= 1``."""
    require(is_count(num_examples, 1), f"num_examples must be an int >= 1: {num_examples!r}")
    return 1.0 / (10 * num_examples)


def resolve_delta(delta: float, *, num_examples: int) -> float:
    """Resolve ``dp.delta``: 0 selects :func:`default_delta`, else it must be < 1/n."""
    if delta == 0.0:
        return default_delta(num_examples)
    check_delta(delta)
    if delta >= 1.0 / num_examples:
        raise ValueError(
            f"dp.delta must be < 1/n = {1.0 / num_examples:.3g} for n={num_examples} "
            f"local examples (or 0 for 1/(10·n)), got {delta!r}"
        )
    return float(delta)


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def is_count(value: object, minimum: int) -> bool:
    """An int (not a bool) >= ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_delta(delta: float) -> None:
    """Require δ in (0, 1)."""
    require(is_number(delta) and 0.0 < delta < 1.0, f"dp.delta must be in (0, 1), got {delta!r}")


def check_accountant(accountant: str) -> None:
    """Require one of :data:`VALID_ACCOUNTANTS`."""
    ok = accountant in VALID_ACCOUNTANTS
    require(ok, f"dp.accountant must be one of {VALID_ACCOUNTANTS}, got {accountant!r}")


def _check_event(event: Iterable[float | int]) -> Event:
    """Validate one ``(noise_multiplier, sample_rate, steps)`` event; normalise types."""
    sigma, q, steps = tuple(event)
    require(is_number(sigma) and 0.0 <= sigma < math.inf, f"event σ must be >= 0: {sigma!r}")
    require(is_number(q) and 0.0 < q <= 1.0, f"event sample_rate must be in (0, 1]: {q!r}")
    require(is_count(steps, 0), f"event steps must be an integer >= 0: {steps!r}")
    return (float(sigma), float(q), int(steps))


def grouped_events(history: Iterable[Event]) -> list[Event]:
    """Merge events with equal ``(σ, q)`` (composition does not depend on order)."""
    steps: dict[tuple[float, float], int] = {}
    for sigma, q, n in history:
        if n > 0:
            steps[(sigma, q)] = steps.get((sigma, q), 0) + n
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def epsilon_of(history: Iterable[Event], *, delta: float, accountant: str) -> float:
    """Return ε at ``delta`` of ``(σ, q, steps)`` events by Opacus' RDP or PRV accountant.

    0.0 for an empty history, ``inf`` if any step had zero noise.
    """
    check_delta(delta)
    check_accountant(accountant)
    events = grouped_events(_check_event(e) for e in history)
    if not events:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in events):
        return math.inf
    if accountant == "rdp":
        return _rdp_epsilon(events, delta)
    acc = PRVAccountant()
    acc.history = events
    if any(q == 1.0 for _, q, _ in events):
        with np.errstate(divide="ignore"):  # expected log(1 - q) = -inf: see module doc
            return float(acc.get_epsilon(delta=delta))
    return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(sigma: float, q: float) -> np.ndarray:
    """RDP of one step at Opacus' default orders, memoised.

    Opacus' accountant recomputes it for every event on every call, and its fractional
    orders make that ~0.2 s per (σ, q) in pure Python; the same (σ, q) recurs in every
    round's ε and budget check, so the per-round ε cost most of a client call.
    """
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=orders)
    rdp.setflags(write=False)
    return rdp


def _rdp_epsilon(events: list[Event], delta: float) -> float:
    """What ``RDPAccountant.get_epsilon`` computes, bit for bit (``compute_rdp`` scales a
    one-step RDP by ``steps``, and the events are summed in the same order)."""
    rdp = sum([_rdp_of_one_step(sigma, q) * steps for sigma, q, steps in events])
    eps, _ = rdp_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


def release_event(stats_noise: float) -> Event:
    """Return the event of one noised count release, ``(σ_s, 1.0, 1)``.

    Counts where each example falls in exactly one cell have L2 sensitivity 1 under
    add/remove-one adjacency: N(0, σ_s²) per cell is a Gaussian mechanism with noise
    multiplier σ_s on the whole dataset (sample rate 1, one step).
    """
    ok = is_number(stats_noise) and 0.0 < stats_noise < math.inf
    require(ok, f"dp.stats-noise must be > 0 for a release, got {stats_noise!r}")
    return (float(stats_noise), 1.0, 1)


def noise_group_counts(counts: np.ndarray, *, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Return ``counts + N(0, σ²)`` per cell (unclipped, unrounded float64).

    Each example must be counted in exactly one cell (one histogram per release), and
    :func:`release_event` must be recorded for every call. ``sigma`` is
    ``dp.stats-noise``; 0 means the counts must not be released, so it raises.
    """
    if not is_number(sigma) or not 0.0 < sigma < math.inf:
        raise ValueError(
            f"dp.stats-noise must be > 0 to release group counts, got {sigma!r}; "
            "with dp.stats-noise = 0 the counts must not be released"
        )
    values = np.asarray(counts, dtype=np.float64)
    require(bool(np.all(np.isfinite(values) & (values >= 0))), "counts must be finite, >= 0")
    return values + rng.normal(0.0, sigma, size=values.shape)


def denoise_counts(released: np.ndarray, *, sigma: float, threshold: float) -> np.ndarray:
    """Zero every released cell below ``threshold · σ`` (``fair.count-threshold``).

    Post-processing of the release, so free in ε. A cell of a group the client does not
    hold is pure noise, N(0, σ²); below 2σ it is noise 98 % of the time, and leaving it in
    moves the shares, the prevalence estimate and every weight built on them.
    ``threshold = 0`` keeps the release as it is.
    """
    values = np.asarray(released, dtype=np.float64)
    if threshold <= 0:
        return values
    return np.where(values < threshold * sigma, 0.0, values)


STATE_KEYS = ("noise_multipliers", "sample_rates", "steps")


class PrivacyLedger:
    """Whole-run history of one client's private releases, in Opacus' event format.

    Parameters
    ----------
    accountant : {"rdp", "prv"}
        Accountant used by :meth:`epsilon` (``dp.accountant``). The history itself is
        accountant-independent.
    history : iterable of (float, float, int), optional
        Initial ``(noise_multiplier, sample_rate, steps)`` events.
    """

    def __init__(self, *, accountant: str = "rdp", history: Iterable[Event] = ()) -> None:
        check_accountant(accountant)
        self.accountant = accountant
        self.history: list[Event] = [_check_event(e) for e in history]

    def epsilon(self, delta: float) -> float:
        """Return ε spent so far at ``delta`` (0.0 when nothing was recorded)."""
        return epsilon_of(self.history, delta=delta, accountant=self.accountant)

    def would_exceed(self, events: Iterable[Event], *, budget: float, delta: float) -> bool:
        """Return whether ε after also composing ``events`` would be above ``budget``."""
        require(is_number(budget) and budget > 0, f"dp.target-epsilon must be > 0: {budget!r}")
        extra = [_check_event(e) for e in events]
        return epsilon_of(self.history + extra, delta=delta, accountant=self.accountant) > budget

    def record(self, events: Iterable[Event]) -> None:
        """Append events that actually happened (always; check :meth:`would_exceed` first)."""
        self.history.extend([_check_event(e) for e in events])

    def history_as_json(self) -> list[list[float | int]]:
        """Return the history as ``[[σ, q, steps], ...]`` for ``results.json``."""
        return [[sigma, q, steps] for sigma, q, steps in self.history]

    def to_state(self) -> dict[str, list[float] | list[int] | str]:
        """Return a ConfigRecord-compatible dict (str and homogeneous lists only)."""
        return {
            "accountant": self.accountant,
            "noise_multipliers": [sigma for sigma, _, _ in self.history],
            "sample_rates": [q for _, q, _ in self.history],
            "steps": [steps for _, _, steps in self.history],
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], *, accountant: str | None = None
    ) -> PrivacyLedger:
        """Rebuild from :meth:`to_state` output (empty state → empty ledger).

        ``accountant`` overrides the stored one, which is safe because the history is
        accountant-independent; with neither, ``"rdp"``.
        """
        chosen = accountant if accountant is not None else state.get("accountant", "rdp")
        columns = [list(state.get(key, [])) for key in STATE_KEYS]
        ok = len({len(column) for column in columns}) == 1
        require(ok, f"privacy state {STATE_KEYS} must be lists of equal length")
        return cls(accountant=chosen, history=zip(*columns, strict=True))
