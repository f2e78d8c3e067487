from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from server.records import write_json
from simulations.__main__ import main
from simulations.evidence import (
    VARIANTS,
    Cell,
    Grid,
    cell_experiment,
    comparable,
    current_and_stale,
    infeasible,
    is_current,
    load_grid,
    run_cells,
    select,
    summary_path,
)
from simulations.report import (
    augmentation_table,
    gap_moved_by,
    gap_vs_cost,
    markdown_table,
    skew_table,
    versus_fedavg_table,
    write_report,
)
from task.config import load_defaults

GRIDS = Path(__file__).resolve().parents[2] / "simulations" / "experiments" / "evidence"
FROM_SCRATCH = GRIDS / "from-scratch"  # the wave-1 grids (tiny BERT from scratch)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_shipped_grids_expand_to_the_full_design() -> None:
    # synthetic and hatecheck also cross 4 augmented variants (docs/augmentation.md)
    for name, variants in (("synthetic", 11), ("hatecheck", 11), ("adult-race", 7)):
        pretrained = load_grid(GRIDS / f"{name}.toml")
        assert len(pretrained.cells) == variants * 4 * 3  # variants × ε × seeds, no skew
        assert {c.epsilon for c in pretrained.cells} == {1.0, 4.0, 8.0, math.inf}
        assert "representation+sampling" in {c.variant for c in pretrained.cells}
    grid = load_grid(FROM_SCRATCH / "synthetic.toml")
    assert grid.overrides["model.name"] == "tiny-bert"
    main = [c for c in grid.cells if c.skew is None]
    assert len(main) == 7 * 3 * 3  # variants × ε × seeds
    assert {c.variant for c in main} <= set(VARIANTS)
    assert {c.epsilon for c in main} == {4.0, 8.0, math.inf}
    skew = [c for c in grid.cells if c.skew is not None]
    # partition.alpha = 0.3 is the grid's own partition: those cells are the main ones.
    assert {c.skew for c in skew} == {0.1, 1.0}
    assert len(skew) == 3 * 2 * 3  # skew variants × other skews × seeds
    assert len(set(grid.cells)) == len(grid.cells)
    for name in ("adult-sex", "adult-race"):
        adult = load_grid(FROM_SCRATCH / f"{name}.toml")
        assert adult.overrides["dataset"] == "adult"


def test_cell_overrides_turn_variant_and_epsilon_into_run_config() -> None:
    dp = Cell("g", "representation+post-clip", 4.0, 2, 0.1).overrides({"dataset": "synthetic"})
    assert dp == {"dataset": "synthetic", "strategy": "representation",
                  "fair.local-weighting": "post-clip", "augment.method": "none", "seed": 2,
                  "dp.target-epsilon": 4.0, "partition.alpha": 0.1}  # fmt: skip
    augmented = Cell("g", "representation+sampling+counterfactual", 8.0, 1, None).overrides({})
    assert augmented["augment.method"] == "counterfactual"
    assert augmented["fair.local-weighting"] == "sampling"
    no_dp = Cell("g", "fedavg", math.inf, 1, None).overrides({})
    assert no_dp["dp.mode"] == "off" and "dp.target-epsilon" not in no_dp
    assert Cell("g", "fedavg", math.inf, 1, None).key == "g-fedavg-epsinf-s1"


def test_unknown_variant_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(
        '[evidence]\nname = "g"\nvariants = ["fedprox"]\nepsilons = [8.0]\nseeds = [1]\n'
    )
    with pytest.raises(ValueError, match="unknown variant.*fedprox"):
        load_grid(path)


def test_select_filters_fields() -> None:
    cells = load_grid(FROM_SCRATCH / "synthetic.toml").cells
    chosen = list(select(cells, variant={"fedavg"}, epsilon={8.0}, seed=None))
    assert {c.variant for c in chosen} == {"fedavg"} and {c.epsilon for c in chosen} == {8.0}


def summary(
    variant: str, seed: int, accuracy: float, gap: float, skew: float | None = None
) -> dict:
    return {"grid": "g", "variant": variant, "epsilon": 8.0, "seed": seed, "skew": skew,
            "partition_alpha": 0.3 if skew is None else skew,
            "wall_s": 60.0, "accuracy": accuracy, "balanced_accuracy": accuracy,
            "worst_group_accuracy": accuracy - gap, "group_accuracy_gap": gap,
            "equalized_odds_difference": 0.1, "demographic_parity_difference": 0.2}  # fmt: skip


def test_table_reports_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    rows = [summary("fedavg", 1, 0.8, 0.4), summary("fedavg", 2, 0.9, 0.2),
            summary("representation", 1, 0.85, 0.1)]  # fmt: skip
    table = markdown_table(rows)
    assert (
        # sample std of (.8, .9) = .1/√2; of worst (.4, .7) = .3/√2; of gaps (.4, .2) = .2/√2
        "| g | fedavg | 8 | 2 | 0.850 ± 0.071 | 0.850 ± 0.071 | 0.550 ± 0.212 | 0.300 ± 0.141 |"
        in table
    )
    report = write_report(rows, tmp_path, {"g": (3, 81, 0), "h": (0, 9, 2)})
    assert (tmp_path / "evidence_worst_group_vs_epsilon.png").stat().st_size > 1000
    assert (tmp_path / "evidence_gap_vs_cost.png").stat().st_size > 1000
    assert "3 runs" in report.read_text()
    assert (
        "Cells run of the designed grid: g 3 of 81; h 0 of 9 (2 cannot run)." in report.read_text()
    )


def test_augmentation_is_compared_with_the_same_variant_seed_by_seed(tmp_path: Path) -> None:
    rows = [summary("fedavg", 1, 0.8, 0.4), summary("fedavg", 2, 0.6, 0.2),
            summary("fedavg+counterfactual", 1, 0.9, 0.2),
            summary("representation+sampling+counterfactual", 1, 0.9, 0.2)]  # fmt: skip
    for row, flips in zip(rows, (0.4, 0.9, 0.3, 0.1), strict=True):
        row["counterfactual_flip_rate"] = flips
    table = augmentation_table(rows)
    # paired on seed 1 only: flip 0.4 → 0.3 (−25 %), worst 0.4 → 0.7 (+75 %), acc +10 points
    assert "| g | fedavg+counterfactual | 8 | 1 |" in table
    assert table.rstrip().endswith("| -25 % | +75 % | +10.0 |")
    assert "representation+sampling+counterfactual" not in table  # its base never ran
    report = write_report(rows, tmp_path)
    assert (tmp_path / "evidence_augmentation.png").stat().st_size > 1000
    assert "## Augmentation" in report.read_text()


def test_skew_table_puts_the_main_cells_at_the_grids_own_alpha() -> None:
    rows = [summary("fedavg", 1, 0.8, 0.4), summary("fedavg", 1, 0.7, 0.5, skew=0.1),
            summary("representation", 1, 0.85, 0.1)]  # fmt: skip
    table = skew_table(rows)
    assert "| g | fedavg | 0.1 | 1 | 0.700 ± 0.000 |" in table
    assert "| g | fedavg | 0.3 | 1 | 0.800 ± 0.000 |" in table
    assert "representation" not in table  # no skew cells of its own


def test_dotted_overrides_are_flat_run_config_keys_and_no_dp_cells_get_their_optimiser() -> None:
    adult = load_grid(FROM_SCRATCH / "adult-sex.toml")
    assert adult.overrides["data.group-column"] == "sex"
    assert adult.overrides["model.max-length"] == 48
    cell = Cell("adult-sex", "fedavg", math.inf, 1, None)
    config = cell.overrides(adult.overrides, adult.no_dp_overrides)
    assert config["dp.mode"] == "off" and config["train.optimizer"] == "adamw"
    dp_config = Cell("adult-sex", "fedavg", 8.0, 1, None).overrides(
        adult.overrides, adult.no_dp_overrides
    )
    assert "train.optimizer" not in dp_config


GRID_TOML = """
[evidence]
name = "g"
variants = ["fedavg", "qfedavg"]
epsilons = [8.0]
seeds = [1]
[evidence.overrides]
dataset = "synthetic"
[federation]
num-supernodes = 4
"""


def record_cell(output_dir: Path, grid: Grid, cell: Cell, **config_changes: object) -> Path:
    """Write a summary as `run_cells` does, for a run whose config differs by `config_changes`."""
    experiment = cell_experiment(grid, cell, output_dir / "runs")
    config = load_defaults() | experiment.overrides | config_changes
    path = summary_path(output_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary(cell.variant, cell.seed, 0.8, 0.3) | {
        "config": config, "federation": experiment.federation})  # fmt: skip
    return path


def record_cell_before(output_dir: Path, grid: Grid, cell: Cell, key: str) -> None:
    """Write a summary as a run from before ``key`` existed left it: without the key."""
    path = record_cell(output_dir, grid, cell)
    recorded = json.loads(path.read_text())
    del recorded["config"][key]
    write_json(path, recorded)


@pytest.fixture
def grid(tmp_path: Path) -> Grid:
    path = tmp_path / "g.toml"
    path.write_text(GRID_TOML)
    return load_grid(path)


def test_a_summary_counts_only_while_its_run_config_is_the_cells_config(
    tmp_path: Path, grid: Grid
) -> None:
    fedavg, qfedavg = grid.cells
    out = tmp_path / "evidence"
    record_cell(out, grid, fedavg)
    assert is_current(grid, fedavg, out)
    record_cell(out, grid, fedavg, **{"dp.max-grad-norm": 0.5})  # a key FedAvg reads
    assert not is_current(grid, fedavg, out)
    assert current_and_stale(grid, grid.cells, out) == ([], [fedavg])
    record_cell(out, grid, fedavg, **{"qfedavg.learning-rate": 1.0, "output-dir": "elsewhere"})
    assert is_current(grid, fedavg, out)  # q-FedAvg's keys and output paths do not decide it
    record_cell(out, grid, qfedavg, **{"qfedavg.learning-rate": 1.0})  # but q-FedAvg reads it
    assert not is_current(grid, qfedavg, out)
    assert current_and_stale(grid, grid.cells, out) == ([fedavg], [qfedavg])


def test_a_summary_without_config_or_from_another_federation_is_stale(
    tmp_path: Path, grid: Grid
) -> None:
    cell = grid.cells[0]
    path = record_cell(tmp_path, grid, cell)
    recorded = json.loads(path.read_text())
    write_json(path, recorded | {"federation": {"num-supernodes": 10, "client-cpus": 1}})
    assert not is_current(grid, cell, tmp_path)
    write_json(path, {k: v for k, v in recorded.items() if k != "config"})
    assert not is_current(grid, cell, tmp_path)


def test_a_moved_checkout_keeps_its_cells() -> None:
    base = load_defaults() | {"dataset": "hatecheck", "data.path": "/old/shared/data/hatecheck"}
    assert comparable(base) == comparable(base | {"data.path": "/new/shared/data/hatecheck"})


def test_augment_keys_decide_a_run_only_for_their_method() -> None:
    base = load_defaults()
    assert comparable(base) == comparable(base | {"augment.variant-loss": "mean", "augment.k": 6})
    counterfactual = base | {"augment.method": "counterfactual"}
    assert comparable(counterfactual) != comparable(
        counterfactual | {"augment.variant-loss": "mean"}
    )


def test_a_counterfactual_cell_recorded_before_variant_loss_existed_is_stale(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.toml"
    path.write_text(GRID_TOML.replace('"fedavg", "qfedavg"', '"fedavg+counterfactual"'))
    grid = load_grid(path)
    cell = grid.cells[0]
    record_cell(tmp_path, grid, cell)
    assert is_current(grid, cell, tmp_path)
    record_cell_before(tmp_path, grid, cell, "augment.variant-loss")  # it trained on the mean
    assert not is_current(grid, cell, tmp_path)


def test_a_cell_recorded_before_the_model_average_existed_is_stale(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path, GRID_TOML))
    cell = grid.cells[0]
    record_cell_before(tmp_path, grid, cell, "ema-decay")  # it reported the last model
    assert not is_current(grid, cell, tmp_path)
    record_cell(tmp_path, grid, cell, **{"ema-decay": 0.5})
    assert is_current(grid, cell, tmp_path)


def test_a_sampling_cell_recorded_before_the_batch_floor_existed_is_stale(
    tmp_path: Path,
) -> None:
    text = GRID_TOML.replace('["fedavg", "qfedavg"]', '["fedavg", "representation+sampling"]')
    grid = load_grid(write_grid(tmp_path, text))
    for cell in grid.cells:
        record_cell_before(tmp_path, grid, cell, "fair.min-batch-share")  # it had no floor
    fedavg, sampling = grid.cells
    assert is_current(grid, fedavg, tmp_path)  # FedAvg does not sample by group
    assert not is_current(grid, sampling, tmp_path)


def test_local_weighting_keys_decide_a_run_only_when_it_weights() -> None:
    base = load_defaults() | {"strategy": "representation"}
    off = base | {"fair.local-weighting": "off"}
    assert comparable(off) == comparable(off | {"fair.local-max-weight": 8.0})
    post = base | {"fair.local-weighting": "post-clip"}
    assert comparable(post) != comparable(post | {"fair.local-max-weight": 8.0})
    assert comparable(post) != comparable(post | {"fair.local-shares": "client"})
    assert comparable(off) == comparable(off | {"fair.local-shares": "client"})
    fedavg = post | {"strategy": "fedavg"}  # sends no population shares
    assert comparable(fedavg) == comparable(fedavg | {"fair.local-shares": "client"})
    no_floor = {"fair.min-batch-share": 0.0}  # the default bounds the batch sampling shrinks
    assert comparable(post) == comparable(post | no_floor)
    sampling = base | {"fair.local-weighting": "sampling"}
    assert comparable(sampling) != comparable(sampling | no_floor)


def test_report_only_leaves_stale_cells_out_and_names_them(
    tmp_path: Path, grid: Grid, capsys: pytest.CaptureFixture[str]
) -> None:
    fedavg, qfedavg = grid.cells
    out = tmp_path / "evidence"
    record_cell(out, grid, fedavg)
    record_cell(out, grid, qfedavg, **{"seed": 99})
    argv = ["evidence", str(tmp_path / "g.toml"), "--report-only",
            "--output-dir", str(out), "--docs", str(tmp_path / "docs")]  # fmt: skip
    assert main(argv) == 0
    assert "g-qfedavg-eps8-s1" in capsys.readouterr().err
    report = (tmp_path / "docs" / "evidence.md").read_text()
    assert "1 runs" in report and "g 1 of 2" in report
    # A command naming one grid still reports every shipped grid: docs never shrink to it.
    assert "synthetic-minilm " in report and " of 84" in report


def test_the_report_goes_under_the_output_dir_unless_docs_is_named(
    tmp_path: Path, grid: Grid, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a clone's docs/ would be ./docs
    out = tmp_path / "evidence"
    record_cell(out, grid, grid.cells[0])
    argv = ["evidence", str(tmp_path / "g.toml"), "--report-only", "--output-dir", str(out)]
    assert main(argv) == 0
    report = (out / "report" / "evidence.md").read_text()
    assert "g 1 of 2" in report
    cell = grid.cells[0]
    assert (f"fedequity evidence {tmp_path / 'g.toml'} --variants {cell.variant} --epsilons "
            f"{cell.epsilon:g} --seeds {cell.seed} --no-skew --docs docs") in report  # fmt: skip
    assert not (tmp_path / "docs").exists()


def write_grid(tmp_path: Path, text: str, name: str = "g.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("seeds = [1]\n", ""), r"\[evidence\] needs \['seeds'\]"),
        (("epsilons = [8.0]", 'epsilons = ["eight"]'), 'epsilons must be numbers > 0 or "inf"'),
        (
            ('dataset = "synthetic"', 'dataset = "synthetic"\ndp.mode = "off"'),
            r"\[evidence.overrides\] may not set \['dp.mode'\]",
        ),
    ],
)
def test_a_bad_grid_file_is_named_with_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = write_grid(tmp_path, GRID_TOML.replace(*change))
    with pytest.raises(ValueError, match=message) as error:
        load_grid(path)
    assert str(path) in str(error.value)


def test_a_grid_federation_is_validated_like_an_experiments(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path, GRID_TOML.replace("num-supernodes", "num-supernode")))
    with pytest.raises(ValueError, match=r"unknown \[federation\] key\(s\) \['num-supernode'\]"):
        cell_experiment(grid, grid.cells[0], tmp_path)


def test_cells_whose_data_cannot_be_partitioned_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """160 training rows cannot give 30 clients >= 10 each: every cell is refused, before
    any flwr run, and the sweep goes on."""
    text = GRID_TOML.replace("num-supernodes = 4", "num-supernodes = 30").replace(
        'dataset = "synthetic"', 'dataset = "synthetic"\nsynthetic.num-examples = 200'
    )
    grid = load_grid(write_grid(tmp_path, text))
    reasons = infeasible(grid, grid.cells)
    assert set(reasons) == set(grid.cells)
    assert "into 30 partitions of >= 10 examples" in reasons[grid.cells[0]]
    run_cells(grid, list(grid.cells), tmp_path / "out")
    assert capsys.readouterr().out.count("cannot run: cannot split the training data") == 2
    assert not list((tmp_path / "out" / "cells").iterdir())


def test_filters_and_grid_names_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_grid(tmp_path, GRID_TOML)
    base = ["evidence", str(path), "--report-only", "--output-dir", str(tmp_path / "out"),
            "--docs", str(tmp_path / "docs")]  # fmt: skip
    assert main([*base, "--variants", "fedvg"]) == 2
    assert "--variants: ['fedvg'] not in any grid" in capsys.readouterr().err
    assert main([*base, "--epsilons", "abc"]) == 2
    assert "--epsilons 'abc': expected comma-separated numbers" in capsys.readouterr().err
    assert main([*base, "--seeds", "1,x"]) == 2
    assert "--seeds '1,x': expected comma-separated whole numbers" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[evidence\n")
    assert main(["evidence", str(broken), "--report-only"]) == 2
    assert f"{broken} is not valid TOML" in capsys.readouterr().err
    twin = write_grid(tmp_path, GRID_TOML, "twin.toml")
    assert main([*base[:2], str(twin), *base[2:]]) == 2
    assert "grid name(s) ['g'] used by more than one grid file" in capsys.readouterr().err
    assert not (tmp_path / "docs").exists()


def test_no_main_cell_means_no_report_and_docs_untouched(tmp_path: Path) -> None:
    (tmp_path / "evidence.md").write_text("published")
    with pytest.raises(ValueError, match="no finished main-grid cell"):
        write_report([summary("fedavg", 1, 0.8, 0.4, skew=0.1)], tmp_path)
    assert (tmp_path / "evidence.md").read_text() == "published"


def test_gap_vs_cost_compares_the_seeds_both_sides_have() -> None:
    rows = [summary("fedavg", 1, 0.80, 0.40), summary("fedavg", 2, 0.90, 0.10),
            summary("representation", 1, 0.78, 0.20)]  # fmt: skip
    # seed 1 only: cost 0.80 − 0.78 = 2 points, reduction 1 − 0.2/0.4 = 50 %
    [(key, cost, reduction)] = gap_vs_cost(rows)
    assert key == ("g", "representation", 8.0)
    assert (cost, reduction) == (pytest.approx(2.0), pytest.approx(50.0))


def test_versus_fedavg_pairs_seeds_and_says_which_end_of_the_gap_moved(tmp_path: Path) -> None:
    rows = [summary("fedavg", 1, 0.80, 0.40), summary("fedavg", 2, 0.90, 0.10),
            # seed 1 only: worst 0.40 → 0.55, best 0.80 → 0.75, gap 0.40 → 0.20
            summary("representation", 1, 0.75, 0.20),
            # the gap halves only because the best group falls: worst 0.40 → 0.30
            summary("fairfed", 1, 0.50, 0.20)]  # fmt: skip
    table = versus_fedavg_table(rows)
    assert ("| g | representation | 8 | 1 | -5.0 | +0.150 | -0.050 | -50 % | closed: worst "
            "group up, best group down |") in table  # fmt: skip
    assert ("| g | fairfed | 8 | 1 | -30.0 | -0.100 | -0.300 | -50 % | closed: worst group "
            "down, best group down |") in table  # fmt: skip
    assert "| fedavg |" not in table
    assert "## Against FedAvg" in write_report(rows, tmp_path).read_text()


@pytest.mark.parametrize(
    ("worst", "best", "said"),
    [(0.1, 0.0, "closed: worst group up"),
     (0.1, -0.1, "closed: worst group up, best group down"),
     (0.0, -0.1, "closed: best group down"),
     (-0.1, -0.2, "closed: worst group down, best group down"),  # levelling down
     (0.1, -0.004, "closed: worst group up"),  # the best moved less than half a point
     (0.004, -0.1, "closed: best group down"),
     (0.004, -0.004, "closed: worst group up"),  # neither half a point: the larger, tied
     (0.1, 0.1, "–"), (0.002, -0.002, "–"),
     (-0.1, 0.0, "widened: worst group down"), (0.0, 0.05, "widened: best group up"),
     (0.1, 0.2, "widened: worst group up, best group up")],
)  # fmt: skip
def test_the_report_names_the_ends_that_moved_the_gap(worst: float, best: float, said: str) -> None:
    assert gap_moved_by(worst, best) == said


@pytest.mark.parametrize("order", [1, -1])
def test_a_refusal_of_one_augmentation_does_not_decide_for_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: int
) -> None:
    grid = load_grid(write_grid(tmp_path, GRID_TOML.replace(
        '["fedavg", "qfedavg"]', '["fedavg", "fedavg+counterfactual", "qfedavg"]')))  # fmt: skip
    real = cell_experiment

    def refuse_counterfactual(grid: Grid, cell: Cell, runs: Path, **kwargs: bool) -> object:
        if VARIANTS[cell.variant]["augment.method"] == "counterfactual":
            raise ValueError("augment.method: refused")
        return real(grid, cell, runs, **kwargs)

    monkeypatch.setattr("simulations.evidence.cell_experiment", refuse_counterfactual)
    reasons = infeasible(grid, grid.cells[::order])
    assert [cell.variant for cell in reasons] == ["fedavg+counterfactual"]


def test_augmentation_rows_average_only_the_seeds_both_sides_ran() -> None:
    rows = [summary("fedavg", 1, 0.8, 0.4), summary("fedavg+counterfactual", 1, 0.9, 0.2),
            summary("fedavg+counterfactual", 2, 0.5, 0.2)]  # fmt: skip
    assert "| g | fedavg+counterfactual | 8 | 1 | 0.900 ± 0.000 |" in augmentation_table(rows)


def test_a_change_that_rounds_to_zero_reads_plus_zero() -> None:
    rows = [summary("fedavg", 1, 0.8, 0.4), summary("representation", 1, 0.7996, 0.4)]
    assert "| g | representation | 8 | 1 | +0.0 | +0.000 | +0.000 | +0 % | – |" in (
        versus_fedavg_table(rows)
    )


def test_the_plots_take_any_number_of_epsilons(tmp_path: Path) -> None:
    rows = [summary(variant, 1, 0.8, 0.3) | {"epsilon": float(eps)}
            for variant in ("fedavg", "representation") for eps in range(1, 11)]  # fmt: skip
    write_report(rows, tmp_path)
    assert (tmp_path / "evidence_gap_vs_cost.png").stat().st_size > 1000
