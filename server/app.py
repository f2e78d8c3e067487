"""ServerApp: read the run-config once, build the strategy, run it, record every round."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from server.central_accountant import CentralAccountant
from server.evaluation import build_evaluator
from server.recorder import RoundRecorder
from server.records import RunDirectory
from strategies import build_strategy, sampled_per_round
from task.config import parse_run_config
from task.privacy_plan import check_release_budget
from task.wire import LEARNING_RATE

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Federate ``num-server-rounds`` rounds and write the run directory."""
    cfg = parse_run_config(context.run_config)
    if cfg.dp.local:
        check_release_budget(cfg)
    evaluator = build_evaluator(cfg)
    run_dir = RunDirectory(cfg.output_dir, str(context.run_id), dict(context.run_config))
    num_nodes = len(list(grid.get_node_ids()))
    central = None
    if cfg.dp.central:
        central = CentralAccountant(
            noise_multiplier=cfg.dp.central_noise,
            num_sampled=sampled_per_round(cfg, num_nodes),
            delta=cfg.dp.central_delta,
        )
    recorder = RoundRecorder(run_dir, evaluator, num_rounds=cfg.num_server_rounds, central=central)
    strategy = build_strategy(
        cfg,
        evaluator.groups,
        num_nodes=num_nodes,
        train_metrics_aggr_fn=recorder.aggregate_train_metrics,
        evaluate_metrics_aggr_fn=recorder.aggregate_eval_metrics,
    )
    recorder.watch(strategy)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(evaluator.initial_weights()),
        num_rounds=cfg.num_server_rounds,
        train_config=ConfigRecord({LEARNING_RATE: cfg.train.learning_rate}),
        evaluate_fn=recorder.evaluate,
    )
