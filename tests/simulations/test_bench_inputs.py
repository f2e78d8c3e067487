"""Bad flags and --set values of the benchmark scripts and the CLI: one error, before anything runs."""

from __future__ import annotations

import argparse

import pytest

from simulations.__main__ import main
from simulations.benchmarks.harness import check_assignments
from simulations.cli_types import comma_separated, positive_int


def test_whole_numbers_and_lists_are_checked_and_named() -> None:
    assert positive_int("3") == 3
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"whole number >= 1, got '{bad}'"):
            positive_int(bad)
    epsilons = comma_separated(float, "numbers or inf")
    assert epsilons("4,8,inf") == "4,8,inf"  # unchanged: the scripts split it themselves
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated numbers or inf, got"):
        epsilons("4,abc")
    with pytest.raises(argparse.ArgumentTypeError, match="whole numbers >= 1, got '10,0'"):
        comma_separated(positive_int, "whole numbers >= 1")("10,0")


def test_a_bad_set_or_flag_exits_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench")
    check_assignments(parser, ["train.batch-size=64"])
    with pytest.raises(SystemExit) as stopped:
        check_assignments(parser, ["foo=1"])
    assert stopped.value.code == 2
    assert "unknown run-config key(s) 'foo'" in capsys.readouterr().err
    for argv, reason in (
        (["--set", "train.learning-rate=inf"], "'train.learning-rate': got inf"),
        (["--steps", "0"], "--steps: expected a whole number >= 1"),
        (["--lora-r", "0"], "--lora-r: expected a whole number >= 1"),
    ):
        with pytest.raises(SystemExit):
            main(["bench", *argv])
        assert reason in capsys.readouterr().err
