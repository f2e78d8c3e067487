"""A client's whole-run privacy plan and the DP-SGD noise calibrated to fit its budget.

The plan counts what a client will release over the run (DP-SGD steps and noised
group-count releases, :mod:`task.accounting` events); :func:`calibrate_noise_multiplier`
finds the smallest σ whose planned history stays within ``dp.target-epsilon``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
from dataclasses import dataclass, replace

import opacus
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from task.accounting import (
    Event,
    check_accountant,
    check_delta,
    epsilon_of,
    grouped_events,
    is_count,
    is_number,
    release_event,
    require,
    resolve_delta,
)
from task.cache import cache_root, write_atomically
from task.config import RunConfig

# Part of the disk key of calibrations: bump it when the search changes.
CALIBRATION_FORMAT = 1
EPSILON_TOLERANCE = 0.01  # absolute, as in opacus.accountants.utils.get_noise_multiplier
MAX_SIGMA = 1e6  # as opacus.accountants.utils.MAX_SIGMA
_MAX_BISECTIONS = 100


@dataclass(frozen=True, kw_only=True)
class PrivacyPlan:
    """A client's planned private history for the whole federated run.

    Parameters
    ----------
    target_epsilon : float
        ε budget for the whole run (``dp.target-epsilon``).
    delta : float
        δ (``dp.delta`` resolved by :func:`task.accounting.resolve_delta`).
    sample_rate : float
        Poisson rate q = 1 / len(data_loader).
    steps_per_round : int
        DP-SGD steps per participation (local epochs × len(data_loader)).
    planned_rounds : int
        Participations planned for (:func:`planned_participations`).
    accountant : {"rdp", "prv"}
        ``dp.accountant``.
    stats_noise : float
        σ_s on released group counts (``dp.stats-noise``). 0 = no release:
        ``releases_counts`` is False, no release is planned and
        :func:`task.accounting.noise_group_counts` refuses to run.
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
        ok = is_number(eps) and 0.0 < eps < math.inf
        require(ok, f"dp.target-epsilon must be a finite number > 0, got {eps!r}")
        check_delta(self.delta)
        ok = is_number(q) and 0.0 < q <= 1.0
        require(ok, f"sample_rate (1 / batches per epoch) must be in (0, 1], got {q!r}")
        for name in ("steps_per_round", "planned_rounds"):
            value = getattr(self, name)
            require(is_count(value, 1), f"{name} must be an integer >= 1, got {value!r}")
        check_accountant(self.accountant)
        ok = is_number(s) and 0.0 <= s < math.inf
        require(ok, f"dp.stats-noise must be finite and >= 0 (0 = no release), got {s!r}")

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
        return grouped_events(self.round_events(noise_multiplier) * self.planned_rounds)


@functools.lru_cache(maxsize=128)
def calibrate_noise_multiplier(plan: PrivacyPlan) -> float:
    """Return the smallest σ (to ε-tolerance 0.01) whose planned history fits the budget.

    The history is ``planned_rounds`` × (``steps_per_round`` steps at (σ, q)) plus
    ``planned_rounds`` releases ``(σ_s, 1.0, 1)``; the result satisfies
    ``target - 0.01 <= ε <= target``. Cached per (frozen, hashable) plan in the process
    and on disk (a pure function of the plan: every Ray worker and every cell of a sweep
    would otherwise bisect the same plan again, ~2 s each on two cores).
    """
    path = cache_root() / "noise" / f"{_plan_key(plan)}.json"
    try:
        sigma = float(json.loads(path.read_text())["sigma"])
    except (OSError, ValueError, KeyError, TypeError):  # absent or unreadable: compute
        sigma = math.nan
    if _fits(plan, sigma):  # a cached σ is checked, never trusted
        return sigma
    sigma = _bisect_noise_multiplier(plan)
    text = json.dumps({"plan": repr(plan), "sigma": sigma})
    with contextlib.suppress(OSError):  # an unwritable cache only costs the next bisection
        write_atomically(path, lambda staging: staging.write_text(text))
    return sigma


def _fits(plan: PrivacyPlan, sigma: float) -> bool:
    """Whether ``sigma`` spends the plan's budget within the tolerance, not more."""
    if not 0.0 < sigma <= MAX_SIGMA:
        return False
    eps = epsilon_of(plan.planned_history(sigma), delta=plan.delta, accountant=plan.accountant)
    return plan.target_epsilon - EPSILON_TOLERANCE <= eps <= plan.target_epsilon


def _plan_key(plan: PrivacyPlan) -> str:
    """The plan and everything the bisection depends on, hashed."""
    text = f"{CALIBRATION_FORMAT}:{opacus.__version__}:{EPSILON_TOLERANCE}:{plan!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _bisect_noise_multiplier(plan: PrivacyPlan) -> float:
    """The search behind :func:`calibrate_noise_multiplier`."""
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


def poisson_steps_per_epoch(sample_rate: float) -> int:
    """Steps per epoch of Opacus' Poisson sampler at rate q, asked of the sampler itself.

    That is ``int(1/q)``, which for q = 1/b rounds down to b - 1 for some b (93, 99, 105…):
    the privacy plan must count the steps that will run, not ``b``.
    """
    return len(UniformWithReplacementSampler(num_samples=1, sample_rate=sample_rate))


def poisson_rate(num_examples: int, batch_size: int) -> float:
    """The plan's Poisson rate q = 1/ceil(n/B); group-balanced sampling draws at most this."""
    return 1 / max(1, math.ceil(num_examples / batch_size))


def _binomial_pmf(trials: int, rate: float, k: int) -> float:
    """P(Binomial(trials, rate) = k), in log space (no overflow at thousands of rounds)."""
    log_pmf = (math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
               + k * math.log(rate) + (trials - k) * math.log1p(-rate))  # fmt: skip
    return math.exp(log_pmf)


def binomial_quantile(trials: int, rate: float, quantile: float) -> int:
    """Smallest k with P(Binomial(trials, rate) <= k) >= quantile."""
    if rate >= 1.0:
        return trials
    cdf = 0.0
    for k in range(trials + 1):
        cdf += _binomial_pmf(trials, rate, k)
        if cdf >= quantile - 1e-12:
            return k
    return trials


def planned_participations(cfg: RunConfig) -> int:
    """How many participations a client's budget is planned for.

    ``dp.planned-participations`` if set; else, with every client in every round, all
    rounds; else the ``dp.plan-quantile`` quantile of Binomial(rounds, fraction-train),
    the count of a client sampled uniformly at random each round. Planning for the mean
    instead leaves about half the clients short of budget in long runs. Client sampling
    gives no amplification here: the server knows who took part, and the sample-level
    guarantee is each client's own, so only the client's own Poisson batches amplify.
    """
    if cfg.dp.planned_participations > 0:
        return cfg.dp.planned_participations
    rounds, fraction = cfg.num_server_rounds, cfg.fraction_train
    return max(1, binomial_quantile(rounds, fraction, cfg.dp.plan_quantile))


def exhaustion_share(cfg: RunConfig) -> float:
    """Expected share of clients sampled more often than planned (who then run out)."""
    planned, rounds, rate = planned_participations(cfg), cfg.num_server_rounds, cfg.fraction_train
    if rate >= 1.0 or planned >= rounds:
        return 0.0
    below = sum(_binomial_pmf(rounds, rate, k) for k in range(planned + 1))
    return max(0.0, 1.0 - below)


def participation_summary(cfg: RunConfig, num_examples: int) -> str | None:
    """What planning for real participation costs, for a client of ``num_examples``
    (None when every client takes part in every round: nothing to choose)."""
    if cfg.fraction_train >= 1.0 and cfg.dp.planned_participations == 0:
        return None
    plan = plan_for(cfg, num_examples)
    expected = max(1, math.ceil(cfg.num_server_rounds * cfg.fraction_train))
    sigma = calibrate_noise_multiplier(plan)
    sigma_mean = calibrate_noise_multiplier(replace(plan, planned_rounds=expected))
    return (
        f"privacy plan: {plan.planned_rounds} participations per client (expected "
        f"{expected}), σ = {sigma:.3f} vs {sigma_mean:.3f} for the expected count, for a "
        f"client of {num_examples} examples; expected share of clients that still run out: "
        f"{exhaustion_share(cfg):.2%}"
    )


def plan_for(cfg: RunConfig, num_examples: int) -> PrivacyPlan:
    """The whole-run plan: planned participations × local steps at the Poisson rate."""
    sample_rate = poisson_rate(num_examples, cfg.train.batch_size)
    return PrivacyPlan(
        target_epsilon=cfg.dp.target_epsilon,
        delta=resolve_delta(cfg.dp.delta, num_examples=num_examples),
        sample_rate=sample_rate,
        steps_per_round=cfg.train.local_epochs * poisson_steps_per_epoch(sample_rate),
        planned_rounds=planned_participations(cfg),
        accountant=cfg.dp.accountant,
        stats_noise=cfg.dp.stats_noise,
    )


def check_release_budget(cfg: RunConfig) -> None:
    """Raise before any training if the count releases alone cannot fit ``dp.target-epsilon``.

    Each client checks its own plan (δ = 1/(10·n) by default) when it first trains; the
    server does not know n, so it checks at the largest δ a client can get (``dp.delta``,
    or 0.1 at n = 1), where the releases cost least: what fails here fails on every client.
    """
    calibrate_noise_multiplier(plan_for(cfg, num_examples=1))


def check_client_budgets(cfg: RunConfig, sizes: list[int]) -> None:
    """Raise before any run if no client, at its real size n (and so its δ and Poisson
    rate), can train within ``dp.target-epsilon``: such a run would have no participant."""
    reasons: dict[int, str] = {}
    for n in sorted(set(sizes)):
        try:
            calibrate_noise_multiplier(plan_for(cfg, num_examples=n))
            return
        except ValueError as error:
            reasons[n] = str(error)
    shown = ", ".join(map(str, sorted(reasons)[:5])) + (" ..." if len(reasons) > 5 else "")
    raise ValueError(
        f"run-config key 'dp.target-epsilon': no client can train within "
        f"{cfg.dp.target_epsilon} (clients of {shown} examples: {next(iter(reasons.values()))})"
    )
