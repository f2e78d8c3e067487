from __future__ import annotations

import math
from pathlib import Path

import pytest

from server.central_accountant import CENTRAL_JOURNAL, CentralAccountant
from task.accounting import epsilon_of


def test_uniform_weights_give_the_wrappers_nominal_noise_multiplier() -> None:
    accountant = CentralAccountant(noise_multiplier=1.0, num_sampled=4, delta=1e-5)
    accountant.record_round({1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25})
    assert accountant.history == [(1.0, 1.0, 1)]


def test_uneven_weights_weaken_the_guarantee_and_are_accounted() -> None:
    uniform = CentralAccountant(noise_multiplier=1.0, num_sampled=4, delta=1e-5)
    skewed = CentralAccountant(noise_multiplier=1.0, num_sampled=4, delta=1e-5)
    for _ in range(3):
        uniform.record_round({1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25})
        skewed.record_round({1: 0.5, 2: 0.2, 3: 0.2, 4: 0.1})
    # sensitivity C·max w = C/2 against noise σC/4: σ_eff = 1 / (4 · 0.5) = 0.5
    assert skewed.history[0] == (0.5, 1.0, 1)
    assert skewed.epsilon() > uniform.epsilon()
    assert skewed.epsilon() == pytest.approx(
        epsilon_of([(0.5, 1.0, 3)], delta=1e-5, accountant="rdp")
    )


def test_report_and_edge_cases() -> None:
    accountant = CentralAccountant(noise_multiplier=0.0, num_sampled=2, delta=1e-5)
    assert accountant.epsilon() == 0.0  # nothing released yet
    accountant.record_round({})  # a round with nothing aggregated releases nothing
    assert accountant.history == []
    accountant.record_round({1: 0.5, 2: 0.5})
    assert math.isinf(accountant.epsilon())  # no noise: no guarantee
    assert accountant.report()["history"] == [[0.0, 1.0, 1]]


def test_a_release_after_the_last_checkpoint_is_still_charged_on_resume(tmp_path: Path) -> None:
    """Round 2's noised aggregate left the server, then the run was killed before its
    checkpoint: the resumed run releases round 2 again and must charge both."""
    journal = tmp_path / CENTRAL_JOURNAL
    first = CentralAccountant(noise_multiplier=1.0, num_sampled=2, delta=1e-5, journal=journal)
    first.record_round({1: 0.5, 2: 0.5})
    checkpointed = [list(event) for event in first.history]  # the checkpoint of round 1
    first.record_round({1: 0.5, 2: 0.5})  # round 2: released, then killed
    resumed = CentralAccountant(noise_multiplier=1.0, num_sampled=2, delta=1e-5, journal=journal)
    resumed.resume(checkpointed)
    assert resumed.history == [(1.0, 1.0, 1)] * 2
    resumed.record_round({1: 0.5, 2: 0.5})  # round 2 again
    assert resumed.epsilon() == pytest.approx(
        epsilon_of([(1.0, 1.0, 3)], delta=1e-5, accountant="rdp")
    )


def _accountant(journal: Path) -> CentralAccountant:
    return CentralAccountant(noise_multiplier=1.0, num_sampled=2, delta=1e-5, journal=journal)


def test_a_journal_line_cut_by_a_kill_was_never_released(tmp_path: Path) -> None:
    journal = tmp_path / CENTRAL_JOURNAL
    journal.write_text("[1.0, 1.0, 1]\n[0.5, 1.")
    accountant = _accountant(journal)
    accountant.resume([])
    assert accountant.history == [(1.0, 1.0, 1)]
    accountant.record_round({1: 0.5, 2: 0.5})  # not glued to the cut line
    again = _accountant(journal)
    again.resume([])
    assert again.history == [(1.0, 1.0, 1)] * 2


def test_a_run_from_before_the_journal_keeps_its_checkpointed_history(tmp_path: Path) -> None:
    journal = tmp_path / CENTRAL_JOURNAL
    first = _accountant(journal)
    first.resume([[0.5, 1.0, 1]])  # the checkpoint's: no journal yet
    assert first.history == [(0.5, 1.0, 1)]
    first.record_round({1: 0.5, 2: 0.5})
    second = _accountant(journal)  # resumed again: the journal now holds both
    second.resume([[0.5, 1.0, 1]])
    assert second.history == [(0.5, 1.0, 1), (1.0, 1.0, 1)]
