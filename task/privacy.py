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
from dataclasses import dataclass
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

Event = tuple[float, float, int]

VALID_ACCOUNTANTS = ("rdp", "prv")
EPSILON_TOLERANCE = 0.01  # absolute, as in opacus.accountants.utils.get_noise_multiplier
MAX_SIGMA = 1e6  # as opacus.accountants.utils.MAX_SIGMA
_MAX_BISECTIONS = 100


def default_delta(num_examples: int) -> float:
    """Return δ = 1 / (10·n), strictly below 1/n, for ``n = num_examples >= 1``."""
    _require(_is_count(num_examples, 1), f"num_examples must be an int >= 1: {num_examples!r}")
    return 1.0 / (10 * num_examples)


def resolve_delta(delta: float, *, num_examples: int) -> float:
    """Resolve ``dp.delta``: 0 selects :func:`default_delta`, else it must be < 1/n."""
    if delta == 0.0:
        return default_delta(num_examples)
    _check_delta(delta)
    if delta >= 1.0 / num_examples:
        raise ValueError(
            f"dp.delta must be < 1/n = {1.0 / num_examples:.3g} for n={num_examples} "
            f"local examples (or 0 for 1/(10·n)), got {delta!r}"
        )
    return float(delta)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_delta(delta: float) -> None:
    _require(_is_number(delta) and 0.0 < delta < 1.0, f"dp.delta must be in (0, 1), got {delta!r}")


def _check_accountant(accountant: str) -> None:
    ok = accountant in VALID_ACCOUNTANTS
    _require(ok, f"dp.accountant must be one of {VALID_ACCOUNTANTS}, got {accountant!r}")


def _check_event(event: Iterable[float | int]) -> Event:
    """Validate one ``(noise_multiplier, sample_rate, steps)`` event; normalise types."""
    sigma, q, steps = tuple(event)
    _require(_is_number(sigma) and 0.0 <= sigma < math.inf, f"event σ must be >= 0: {sigma!r}")
    _require(_is_number(q) and 0.0 < q <= 1.0, f"event sample_rate must be in (0, 1]: {q!r}")
    _require(_is_count(steps, 0), f"event steps must be an integer >= 0: {steps!r}")
    return (float(sigma), float(q), int(steps))


def _grouped(history: Iterable[Event]) -> list[Event]:
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
    _check_delta(delta)
    _check_accountant(accountant)
    events = _grouped(_check_event(e) for e in history)
    if not events:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in events):
        return math.inf
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = events
    if accountant == "prv" and any(q == 1.0 for _, q, _ in events):
        with np.errstate(divide="ignore"):  # expected log(1 - q) = -inf: see module doc
            return float(acc.get_epsilon(delta=delta))
    return float(acc.get_epsilon(delta=delta))


def release_event(stats_noise: float) -> Event:
    """Return the event of one noised count release, ``(σ_s, 1.0, 1)``.

    Counts where each example falls in exactly one cell have L2 sensitivity 1 under
    add/remove-one adjacency: N(0, σ_s²) per cell is a Gaussian mechanism with noise
    multiplier σ_s on the whole dataset (sample rate 1, one step).
    """
    ok = _is_number(stats_noise) and 0.0 < stats_noise < math.inf
    _require(ok, f"dp.stats-noise must be > 0 for a release, got {stats_noise!r}")
    return (float(stats_noise), 1.0, 1)


def noise_group_counts(counts: np.ndarray, *, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Return ``counts + N(0, σ²)`` per cell (unclipped, unrounded float64).

    Each example must be counted in exactly one cell (one histogram per release), and
    :func:`release_event` must be recorded for every call. ``sigma`` is
    ``dp.stats-noise``; 0 means the counts must not be released, so it raises.
    """
    if not _is_number(sigma) or not 0.0 < sigma < math.inf:
        raise ValueError(
            f"dp.stats-noise must be > 0 to release group counts, got {sigma!r}; "
            "with dp.stats-noise = 0 the counts must not be released"
        )
    values = np.asarray(counts, dtype=np.float64)
    _require(bool(np.all(np.isfinite(values) & (values >= 0))), "counts must be finite, >= 0")
    return values + rng.normal(0.0, sigma, size=values.shape)


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """A client's planned private history for the whole federated run.

    Parameters
    ----------
    target_epsilon : float
        ε budget for the whole run (``dp.target-epsilon``).
    delta : float
        δ (``dp.delta`` resolved by :func:`resolve_delta`).
    sample_rate : float
        Poisson rate q = 1 / len(data_loader).
    steps_per_round : int
        DP-SGD steps per participation (local epochs × len(data_loader)).
    planned_rounds : int
        Expected participations (num-server-rounds × fraction-train, rounded up).
    accountant : {"rdp", "prv"}
        ``dp.accountant``.
    stats_noise : float
        σ_s on released group counts (``dp.stats-noise``). 0 = no release:
        ``releases_counts`` is False, no release is planned and
        :func:`noise_group_counts` refuses to run.
    """

    target_epsilon: float
    delta: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    accountant: str = "rdp"
    stats_noise: float = 0.0

    def __post_init__(self) -> None:
        eps, s, q = self.target_epsilon, self.stats_noise, self.sample_rate
        ok = _is_number(eps) and 0.0 < eps < math.inf
        _require(ok, f"dp.target-epsilon must be a finite number > 0, got {eps!r}")
        _check_delta(self.delta)
        ok = _is_number(q) and 0.0 < q <= 1.0
        _require(ok, f"sample_rate (1 / batches per epoch) must be in (0, 1], got {q!r}")
        for name in ("steps_per_round", "planned_rounds"):
            value = getattr(self, name)
            _require(_is_count(value, 1), f"{name} must be an integer >= 1, got {value!r}")
        _check_accountant(self.accountant)
        ok = _is_number(s) and 0.0 <= s < math.inf
        _require(ok, f"dp.stats-noise must be finite and >= 0 (0 = no release), got {s!r}")

    @property
    def releases_counts(self) -> bool:
        """Whether noised group counts may be released (``stats_noise > 0``)."""
        return self.stats_noise > 0.0

    def round_events(self, noise_multiplier: float) -> list[Event]:
        """Return one planned participation: the training steps, then the release."""
        events = [(float(noise_multiplier), float(self.sample_rate), self.steps_per_round)]
        if self.releases_counts:
            events.append(release_event(self.stats_noise))
        return events

    def planned_history(self, noise_multiplier: float) -> list[Event]:
        """Return all ``planned_rounds`` participations, grouped by ``(σ, q)``."""
        return _grouped(self.round_events(noise_multiplier) * self.planned_rounds)


@functools.lru_cache(maxsize=128)
def calibrate_noise_multiplier(plan: PrivacyPlan) -> float:
    """Return the smallest σ (to ε-tolerance 0.01) whose planned history fits the budget.

    The history is ``planned_rounds`` × (``steps_per_round`` steps at (σ, q)) plus
    ``planned_rounds`` releases ``(σ_s, 1.0, 1)``; the result satisfies
    ``target - 0.01 <= ε <= target``. Cached per (frozen, hashable) plan.
    """
    # opacus.accountants.utils.get_noise_multiplier overwrites accountant.history with a
    # single (σ, q, steps) entry, so it cannot include the count releases: we bisect
    # ourselves, with its ceiling (MAX_SIGMA) and tolerance, over the full planned history.
    if plan.releases_counts:
        releases = [release_event(plan.stats_noise)] * plan.planned_rounds
        eps_stats = epsilon_of(releases, delta=plan.delta, accountant=plan.accountant)
        if eps_stats >= plan.target_epsilon:
            raise ValueError(
                f"dp.stats-noise={plan.stats_noise} alone costs ε={eps_stats:.3f} over "
                f"{plan.planned_rounds} releases, not below dp.target-epsilon="
                f"{plan.target_epsilon}: raise dp.stats-noise or dp.target-epsilon"
            )

    def eps_at(sigma: float) -> float:
        return epsilon_of(plan.planned_history(sigma), delta=plan.delta, accountant=plan.accountant)

    # Doubling from σ = 1 keeps PRV away from tiny σ, where one evaluation takes seconds.
    sigma_low, sigma_high = 0.0, 1.0
    eps_high = eps_at(sigma_high)
    while eps_high > plan.target_epsilon:
        sigma_low, sigma_high = sigma_high, 2.0 * sigma_high
        if sigma_high > MAX_SIGMA:
            raise ValueError(
                f"dp.target-epsilon={plan.target_epsilon} is not reachable with σ <= "
                f"{MAX_SIGMA:g}: raise dp.target-epsilon or dp.stats-noise"
            )
        eps_high = eps_at(sigma_high)
    for _ in range(_MAX_BISECTIONS):
        if plan.target_epsilon - eps_high <= EPSILON_TOLERANCE:
            break
        sigma = 0.5 * (sigma_low + sigma_high)
        eps = eps_at(sigma)
        if eps <= plan.target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


_STATE_KEYS = ("noise_multipliers", "sample_rates", "steps")


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
        _check_accountant(accountant)
        self.accountant = accountant
        self.history: list[Event] = [_check_event(e) for e in history]

    def epsilon(self, delta: float) -> float:
        """Return ε spent so far at ``delta`` (0.0 when nothing was recorded)."""
        return epsilon_of(self.history, delta=delta, accountant=self.accountant)

    def would_exceed(self, events: Iterable[Event], *, budget: float, delta: float) -> bool:
        """Return whether ε after also composing ``events`` would be above ``budget``."""
        _require(_is_number(budget) and budget > 0, f"dp.target-epsilon must be > 0: {budget!r}")
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
        columns = [list(state.get(key, [])) for key in _STATE_KEYS]
        ok = len({len(column) for column in columns}) == 1
        _require(ok, f"privacy state {_STATE_KEYS} must be lists of equal length")
        return cls(accountant=chosen, history=zip(*columns, strict=True))
