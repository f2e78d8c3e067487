"""ServerApp: read the run-config once, build the strategy, run it, record every round."""

from __future__ import annotations

import json
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from server import checkpoint
from server.central_accountant import CENTRAL_JOURNAL, CentralAccountant
from server.evaluation import build_evaluator
from server.handshake import complete_line, wait_at_gate
from server.prompt_grid import prompt
from server.recorder import RoundRecorder
from server.records import RunDirectory
from strategies import build_strategy, sampled_per_round
from strategies.screened_clipping import ScreenedFixedClipping
from task.config import RunConfig, config_differences, parse_run_config
from task.privacy_plan import check_release_budget
from task.wire import LEARNING_RATE, LEDGER_DIR

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Federate ``num-server-rounds`` rounds and write the run directory (``resume-from``:
    continue the run in that directory from its checkpoint)."""
    cfg = parse_run_config(context.run_config)
    if cfg.dp.local:
        check_release_budget(cfg)
    grid = prompt(grid)
    evaluator = build_evaluator(cfg)
    num_nodes = len(list(grid.get_node_ids()))
    resumed = _checkpoint_to_resume(cfg, dict(context.run_config), num_nodes)
    wait_at_gate()  # the launcher may still be validating: write nothing before its go
    if resumed is None:
        run_dir = RunDirectory(cfg.output_dir, str(context.run_id), dict(context.run_config))
    else:
        run_dir = RunDirectory.reopen(cfg.resume_from, resumed.state["rounds"])
    central = _central(cfg, num_nodes, run_dir.path)
    recorder = RoundRecorder(
        run_dir,
        evaluator,
        num_rounds=cfg.num_server_rounds,
        central=central,
        ema_decay=cfg.ema_decay,
    )
    strategy = build_strategy(
        cfg,
        evaluator.groups,
        num_nodes=num_nodes,
        train_metrics_aggr_fn=recorder.aggregate_train_metrics,
        evaluate_metrics_aggr_fn=recorder.aggregate_eval_metrics,
    )
    if isinstance(strategy, ScreenedFixedClipping) and central is not None:
        strategy.charge = central.record_round
    recorder.watch(strategy)
    strategy.evaluation_model = recorder.reported_arrays
    recorder.extra["num_nodes"] = num_nodes
    initial = ArrayRecord(evaluator.initial_weights())
    if resumed is not None:
        recorder.resume_from(resumed)
        strategy.resume_from(resumed.round, resumed.state["strategy"])
        initial = ArrayRecord({k: Array(v) for k, v in resumed.arrays.items()})
    train_config = ConfigRecord({LEARNING_RATE: cfg.train.learning_rate})
    if cfg.dp.local:  # simulated clients keep their ledger files under the run directory
        train_config[LEDGER_DIR] = str(run_dir.path / "ledgers")
    strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=cfg.num_server_rounds - recorder.round_offset,
        timeout=cfg.round_timeout,
        train_config=train_config,
        evaluate_fn=recorder.evaluate,
    )
    if recorder.complete:
        log(INFO, complete_line(run_dir.path))


def _checkpoint_to_resume(
    cfg: RunConfig, run_config: dict[str, Any], num_nodes: int
) -> checkpoint.Checkpoint | None:
    if not cfg.resume_from:
        return None
    resumed = checkpoint.load(Path(cfg.resume_from))
    # `fedequity run --resume` checks this too, with the experiment's names; a `--set
    # resume-from=` or a deployed `flwr run` reaches only this one
    config_file = Path(cfg.resume_from) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"resume-from {cfg.resume_from}: no config.json there")
    recorded = json.loads(config_file.read_text())
    if shown := config_differences(recorded, run_config):
        raise ValueError(
            f"resume-from {cfg.resume_from}: this run's config differs from the resumed "
            f"run's ({shown}); resume with the same config"
        )
    if (had := resumed.state["extra"].get("num_nodes")) != num_nodes:
        raise ValueError(
            f"resume-from {cfg.resume_from}: the run had {had} nodes, this federation has "
            f"{num_nodes}"
        )
    return resumed


def _central(cfg: RunConfig, num_nodes: int, run_dir: Path) -> CentralAccountant | None:
    if not cfg.dp.central:
        return None
    return CentralAccountant(
        noise_multiplier=cfg.dp.central_noise,
        num_sampled=sampled_per_round(cfg, num_nodes),
        delta=cfg.dp.central_delta,
        journal=run_dir / CENTRAL_JOURNAL,
    )
