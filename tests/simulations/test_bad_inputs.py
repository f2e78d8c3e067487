"""What a new user gets wrong, and the one clear error each gets before anything starts.

Every case runs ``fedequity run`` with a bad input and asserts: exit code != 0, exactly one
``error:`` line that names the key, file or column (``expected``, a regex), no run trained,
and an existing run directory (and ``latest``) left untouched. The slow checks (model, data,
budgets) run while Flower starts, so the runner here is a fake that only calls them, as the
real one does before its ServerApp may pass the start gate (``tests/e2e/test_start_gate.py``
runs a bad input through a real SuperLink).
``{name}`` in an argument is a file of :func:`files` (a path under the test's tmp dir).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import simulations.inprocess
import simulations.runner
from simulations.__main__ import main


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    expected: str  # regex searched in stderr


def case(name: str, expected: str, *argv: str) -> Case:
    return Case(name, argv, expected)


def sets(*pairs: str) -> tuple[str, ...]:
    return tuple(a for p in pairs for a in ("--set", p))


CSV = sets("dataset=csv", "data.path={good}", "partition.method=iid")

CASES = [
    # --- keys and values -------------------------------------------------------------
    case("unknown key", r"'stratgy'; did you mean 'strategy'", *sets("stratgy=fedavg")),
    case("key in the wrong group", r"'dp.alpha'; did you mean 'fair.alpha'", *sets("dp.alpha=1")),
    case("mistyped dotted key", r"did you mean 'dp.target-epsilon'", *sets("dp.target-epsilon2=1")),
    case("assignment without =", r"--set expects key=value", "--set", "seed"),
    case("text for an int", r"'seed': expected int", *sets("seed=abc")),
    case("float for an int", r"'seed': expected int", *sets("seed=1.5")),
    case("bool for a float", r"'fair.alpha': expected float", *sets("fair.alpha=true")),
    case("zero rounds", r"'num-server-rounds'.*>= 1", *sets("num-server-rounds=0")),
    case("fraction above 1", r"'fraction-train'.*\(0, 1\]", *sets("fraction-train=1.5")),
    case("delta of 1", r"'dp.delta'.*\(0, 1\)", *sets("dp.delta=1.0")),
    case("batch of 0", r"'train.batch-size'.*>= 1", *sets("train.batch-size=0")),
    case("alpha out of range", r"'fair.alpha'.*\[0, 10\]", *sets("fair.alpha=11")),
    case("negative epsilon", r"'dp.target-epsilon'.*> 0", *sets("dp.target-epsilon=-1")),
    case("unknown strategy", r"'strategy'.*'fedavg'", *sets("strategy=fedprox")),
    case("unknown dataset", r"'dataset'.*'synthetic'", *sets("dataset=imdb")),
    case("unknown partition", r"'partition.method'.*'dirichlet'", *sets("partition.method=x")),
    case("unknown fine-tuning", r"'model.finetune'.*'head'", *sets("model.finetune=prefix")),
    case("unknown robust rule", r"'robust.method'.*'median'", *sets("robust.method=krum")),
    case(
        "frozen head on tiny-bert",
        r"'model.finetune'.*tiny-bert",
        *sets("model.name=tiny-bert", "model.finetune=head"),
    ),
    case(
        "fault rates above 1",
        r"sum must be <= 1",
        *sets("faults.crash-rate=0.7", "faults.nan-rate=0.7"),
    ),
    case(
        "timeout fault, hour-long timeout",
        r"'round-timeout'.*at most 600",
        *sets("faults.timeout-rate=0.1"),
    ),
    case(
        "robust with q-FedAvg",
        r"'robust.method'.*qfedavg",
        *sets("strategy=qfedavg", "robust.method=median"),
    ),
    case(
        "central DP without noise",
        r"'dp.central-noise'.*no\s+guarantee",
        *sets("dp.mode=central", "dp.central-noise=0"),
    ),
    case(
        "central DP with q-FedAvg",
        r"'dp.mode'.*qfedavg",
        *sets("strategy=qfedavg", "dp.mode=central"),
    ),
    case(
        "an infinite learning rate",
        r"'train.learning-rate': got inf; valid: a finite number",
        *sets("train.learning-rate=inf"),
    ),
    case(
        "a number for a data path",
        r"'data.path': expected str, got 3",
        *sets("dataset=csv", "data.path=3"),
    ),
    case(
        "central DP with a median",
        r"'robust.method'.*'median'.*C · max weight",
        *sets("dp.mode=central", "robust.method=median"),
    ),
    case(
        "more planned participations than rounds",
        r"'dp.planned-participations'",
        *sets("num-server-rounds=8", "dp.planned-participations=9"),
    ),
    case(
        "a budget no client can train in",
        r"'dp.target-epsilon': no client can train",
        *sets("dp.target-epsilon=0.01"),
    ),
    case(
        "synthesis without public material",
        r"'augment.method'.*'synthesize'",
        *CSV,
        *sets("augment.method=synthesize"),
    ),
    # --- data ------------------------------------------------------------------------
    case("csv without data.path", r"'data.path' is required", *sets("dataset=csv")),
    case("hf without data.name", r"'data.name' is required", *sets("dataset=hf")),
    case(
        "data.path the dataset ignores", r"'data.path'.*would be ignored", *sets("data.path={good}")
    ),
    case(
        "missing file",
        r"data.path: file .*nope.csv does not exist",
        *sets("dataset=csv", "data.path={missing}"),
    ),
    case(
        "unsupported extension",
        r"data.path: unsupported file extension '.txt'",
        *sets("dataset=csv", "data.path={text_file}"),
    ),
    case("empty file", r"empty.csv as csv", *sets("dataset=csv", "data.path={empty}")),
    case("header only", r"header.csv needs rows", *sets("dataset=csv", "data.path={header}")),
    case("one row", r"one.csv needs rows.*found 1", *sets("dataset=csv", "data.path={one}")),
    case(
        "all texts empty",
        r"blank.csv needs rows with non-empty text",
        *sets("dataset=csv", "data.path={blank}"),
    ),
    case(
        "one label value",
        r"one-label.csv needs .* 2 distinct values in label column",
        *sets("dataset=csv", "data.path={one_label}"),
    ),
    case("not UTF-8", r"latin.csv line 3 is not UTF-8", *sets("dataset=csv", "data.path={latin}")),
    case(
        "malformed JSONL line",
        r"bad.jsonl as jsonl .*line 2 is not valid JSON",
        *sets("dataset=jsonl", "data.path={bad_jsonl}"),
    ),
    case(
        "JSONL line not an object",
        r"list.jsonl .*line 1 is a JSON list",
        *sets("dataset=jsonl", "data.path={list_jsonl}"),
    ),
    case(
        "parquet that is a CSV",
        r"text.parquet as parquet",
        *sets("dataset=parquet", "data.path={fake_parquet}"),
    ),
    case(
        "missing text column",
        r"data.text-column: column 'body' not found",
        *CSV,
        *sets("data.text-column=body"),
    ),
    case(
        "missing label column",
        r"data.label-column: column 'y' not found",
        *CSV,
        *sets("data.label-column=y"),
    ),
    case(
        "missing group column",
        r"data.group-column: column 'race' not found",
        *CSV,
        *sets("data.group-column=race"),
    ),
    case(
        "label column is the text column",
        r"'data.text-column' and 'data.label-column'",
        *CSV,
        *sets("data.label-column=text"),
    ),
    case(
        "a single group",
        r"data.group-column 'group'.*1 group\(s\) \['a'\]",
        *sets("dataset=csv", "data.path={one_group}", "partition.method=iid"),
    ),
    case(
        "group shares of an unknown group",
        r"'data.group-shares'.*unknown \['x'\]",
        *CSV,
        *sets("data.group-shares='a=0.5, x=0.5'"),
    ),
    case(
        "hub dataset not in the cache",
        r"data.name: cannot load 'nope/nothing'",
        *sets("dataset=hf", "data.name=nope/nothing"),
    ),
    # --- model -----------------------------------------------------------------------
    case(
        "missing model folder",
        r"model.name='/.*no-model': no such folder",
        *sets("model.name={missing_model}"),
    ),
    case(
        "empty model folder",
        r"no config.json \(it holds nothing\)",
        *sets("model.name={empty_model}"),
    ),
    case(
        "corrupt config.json",
        r"model.name: .*config.json is not a JSON config",
        *sets("model.name={corrupt_model}"),
    ),
    case(
        "uncached hub model",
        r"model.name='nobody/no-such-model'.*Hugging Face cache",
        *sets("model.name=nobody/no-such-model"),
    ),
    # --- federation, files and options -----------------------------------------------
    case("zero supernodes", r"'num-supernodes' must be an int >= 2", "--supernodes", "0"),
    case(
        "more supernodes than examples",
        r"cannot split the training data into 500",
        "--supernodes",
        "500",
        *sets("synthetic.num-examples=200"),
    ),
    case(
        "IID shards too small for a client",
        r"cannot split the training data into 200 partitions of >= 10 .*'iid'.*shards of 1",
        "--supernodes",
        "200",
        *sets("synthetic.num-examples=400", "partition.method=iid"),
    ),
    case(
        "experiment TOML syntax error",
        r"experiment file .*broken.toml is not valid TOML",
        "{broken_toml}",
    ),
    case(
        "missing experiment file", r"experiment file .*absent.toml does not exist", "{absent_toml}"
    ),
    case(
        "unknown federation key",
        r"unknown \[federation\] key\(s\) \['num-nodes'\]",
        "{federation_toml}",
    ),
    case("output dir is a file", r"output-dir '.*one.csv' is a file", "--output-dir", "{one}"),
    case(
        "output dir under a file",
        r"output-dir '.*' lies under the file .*one.csv",
        "--output-dir",
        "{under_file}",
    ),
    case(
        "unwritable output dir",
        r"output-dir '/sys/fedequity-out' is not writable",
        "--output-dir",
        "/sys/fedequity-out",
    ),
    case(
        "resume a directory that is no run",
        r"--resume .*: no config.json there",
        "--resume",
        "{empty_model}",
    ),
    case(
        "resume-from a directory that is no run",
        r"resume-from=/.*: no config.json there",
        *sets("resume-from={empty_model}"),
    ),
    case(
        "resume with another output dir",
        r"--output-dir: a resumed run stays",
        "--resume",
        "{empty_model}",
        "--output-dir",
        "{empty_model}",
    ),
]


def write_csv(path: Path, rows: list[str], header: str = "text,label,group") -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "inputs"
    d.mkdir()
    good = [f"sentence {i},{i % 2},{'ab'[i % 3 == 0]}" for i in range(400)]
    (d / "latin.csv").write_bytes(b"text,label,group\nok,1,a\n\xff\xfe bad,0,b\n")
    (d / "bad.jsonl").write_text('{"text": "a", "label": 1, "group": "x"}\n{"text": oops}\n')
    (d / "list.jsonl").write_text("[1, 2]\n")
    (d / "text.parquet").write_text("text,label,group\nhello,1,a\n")
    (d / "empty.csv").write_text("")
    (d / "notes.txt").write_text("hello")
    for model in ("empty-model", "corrupt-model"):
        (d / model).mkdir()
    (d / "corrupt-model" / "config.json").write_text("{not json")
    (d / "broken.toml").write_text("[federation\nnum-supernodes = 3\n")
    (d / "federation.toml").write_text("[federation]\nnum-nodes = 3\n")
    return {
        "good": write_csv(d / "good.csv", good),
        "one": write_csv(d / "one.csv", ["hello,1,a"]),
        "header": write_csv(d / "header.csv", []),
        "blank": write_csv(d / "blank.csv", [f",{i % 2},a" for i in range(20)]),
        "one_label": write_csv(d / "one-label.csv", [f"s{i},pos,{'ab'[i % 2]}" for i in range(50)]),
        "one_group": write_csv(d / "one-group.csv", [f"s{i},{i % 2},a" for i in range(400)]),
        "latin": str(d / "latin.csv"),
        "bad_jsonl": str(d / "bad.jsonl"),
        "list_jsonl": str(d / "list.jsonl"),
        "fake_parquet": str(d / "text.parquet"),
        "empty": str(d / "empty.csv"),
        "text_file": str(d / "notes.txt"),
        "missing": str(d / "nope.csv"),
        "missing_model": str(d / "no-model"),
        "empty_model": str(d / "empty-model"),
        "corrupt_model": str(d / "corrupt-model"),
        "broken_toml": str(d / "broken.toml"),
        "absent_toml": str(d / "absent.toml"),
        "federation_toml": str(d / "federation.toml"),
        "under_file": str(d / "one.csv" / "runs"),
    }


def snapshot(root: Path) -> dict[str, bytes | str]:
    return {
        str(p.relative_to(root)): (str(p.readlink()) if p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def output_dir_with_a_previous_run(tmp_path: Path) -> tuple[Path, dict[str, bytes | str]]:
    """``tmp_path/outputs`` holding a complete run and ``latest``, and its snapshot."""
    out = tmp_path / "outputs"
    previous = out / "1234"
    previous.mkdir(parents=True)
    (previous / "results.json").write_text(json.dumps({"status": "complete", "rounds": []}))
    (out / "latest").symlink_to("1234")
    return out, snapshot(out)


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_a_bad_input_gets_one_clear_error_before_anything_starts(
    bad: Case,
    files: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, before = output_dir_with_a_previous_run(tmp_path)

    def started(*_args: object, validate: Callable[[], None] | None = None, **_: object) -> None:
        if validate is not None:  # the runner's contract: nothing trains before it passes
            validate()
        raise AssertionError("a run started despite the bad input")

    monkeypatch.setattr(simulations.runner, "run_experiment", started)
    monkeypatch.setattr(simulations.inprocess, "run_in_process", started)
    argv = ["run", *(a.format(**files) for a in bad.argv)]
    if "--output-dir" not in argv and "--resume" not in argv:
        argv += ["--output-dir", str(out)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("error:") == 1, err
    assert re.search(bad.expected, err, flags=re.DOTALL), err
    assert snapshot(out) == before


def test_a_bad_feature_cache_limit_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, before = output_dir_with_a_previous_run(tmp_path)
    monkeypatch.setenv("FEDEQUITY_FEATURE_CACHE_GB", "10GB")
    monkeypatch.setattr(simulations.inprocess, "run_in_process", pytest.fail)
    assert main(["run", "--engine", "in-process", "--output-dir", str(out)]) != 0
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "FEDEQUITY_FEATURE_CACHE_GB='10GB'" in err, err
    assert snapshot(out) == before


def test_the_suite_covers_at_least_45_cases() -> None:
    assert len(CASES) >= 45
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--set", "stratgy=fedavg"]])
def test_help_and_config_errors_load_no_heavy_library(argv: list[str]) -> None:
    """They answer before torch, transformers or datasets are imported (seconds each)."""
    code = (
        "import sys\nfrom simulations.__main__ import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({'torch', 'transformers', 'datasets', 'flwr'} & set(sys.modules))\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], check=True)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow  # the data check runs while a real SuperLink starts
def test_a_run_refused_by_its_data_leaves_no_output_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new" / "outputs"
    argv = ["run", "--set", "data.group-shares=mars=1", "--output-dir", str(new)]
    assert main(argv) != 0
    assert "mars" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
