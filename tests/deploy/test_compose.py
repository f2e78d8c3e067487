"""docker-compose.yml: what compose validates (config -q) and what it does not."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import flwr
import pytest

from deploy import compose_checks as cc
from deploy import compose_policy as cp
from deploy import validate_compose as vc
from deploy.certs import TlsBundle, generate

REPO = Path(__file__).resolve().parents[2]
BASE_TEXT = (REPO / "docker-compose.yml").read_text()
Check = Callable[[cc.Compose], list[str]]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> TlsBundle:
    tmp = tmp_path_factory.mktemp("compose-certs")
    return generate(3, tmp / "certs", tmp / "keys")


def _mutated(tmp_path: Path, old: str, new: str, count: int = 1) -> cc.Compose:
    assert old in BASE_TEXT, f"mutation target {old!r} not in docker-compose.yml"
    path = tmp_path / "docker-compose.yml"
    path.write_text(BASE_TEXT.replace(old, new, count))
    return cc.load(path)


def test_repository_compose_files_pass_every_structural_check() -> None:
    assert vc.structural_problems() == []


def test_secret_files_are_exactly_what_the_cert_script_produces(bundle: TlsBundle) -> None:
    compose = cc.load(REPO / "docker-compose.yml")
    remap = {
        "./deploy/certs/": bundle.ca_cert.parent,
        "./deploy/keys/": bundle.supernodes[0].auth_key.parent,
    }
    assert cc.check_secret_files(compose, REPO, remap) == []
    bundle.supernodes[2].runtime_key.unlink()
    try:
        problems = cc.check_secret_files(compose, REPO, remap)
    finally:
        generate(3, bundle.ca_cert.parent, bundle.supernodes[0].auth_key.parent)
    assert problems == [
        f"secret supernode-2-key: file ./deploy/certs/supernode-2.key not produced "
        f"({bundle.supernodes[2].runtime_key} missing)"
    ]


MUTATIONS: list[tuple[str, str, str, Check, str]] = [
    # (description, old, new, check, expected problem fragment)
    (
        "insecure SuperNode",
        "- --root-certificates=/run/secrets/flwr-ca\n"
        "      - --auth-supernode-private-key=/run/secrets/supernode-1-auth-key",
        "- --insecure\n      - --auth-supernode-private-key=/run/secrets/supernode-1-auth-key",
        cp.check_secure,
        "supernode-1: --insecure in the secure configuration",
    ),
    (
        "auth off",
        "      - --enable-supernode-auth\n",
        "",
        cp.check_secure,
        "superlink: SuperLink without --enable-supernode-auth",
    ),
    (
        "no secret",
        "- --superexec-auth-secret-file=/run/secrets/supernode-0-superexec-secret\n"
        "      - --health",
        "- --health",
        cp.check_secure,
        "superexec-clientapp-0: no --superexec-auth-secret-file",
    ),
    (
        "removed flag",
        "      - --port=8000\n",
        "      - --fleet-api-address=0.0.0.0:9092\n      - --bogus\n",
        lambda c: cc.parsed_commands(c)[1],
        "superlink: flower-superlink rejects its command",
    ),
    (
        "secret not mounted",
        "      - supernode-1-cert\n",
        "",
        cc.check_secret_mounts,
        "supernode-1: reads /run/secrets/supernode-1-cert but does not mount it",
    ),
    (
        "wrong partition",
        "partition-id=2 num-partitions",
        "partition-id=1 num-partitions",
        cp.check_topology,
        "partition-ids ['0', '1'] are not 0..N-1",
    ),
    (
        "wrong N",
        "num-partitions=${FEDEQUITY_NUM_PARTITIONS:-3}",
        "num-partitions=2",
        cp.check_topology,
        "supernode-0: num-partitions=2, expected 3",
    ),
    (
        "seeded DP noise",
        "secure-rng=true",
        "secure-rng=false",
        cp.check_topology,
        "supernode-0: node-config must set secure-rng=true",
    ),
    (
        "node-config Flower reads differently",
        "num-partitions=${FEDEQUITY_NUM_PARTITIONS:-3} secure-rng=true",
        "num-partitions=${FEDEQUITY_NUM_PARTITIONS:-3} secure-rng = true",
        cp.check_topology,
        "supernode-0: node-config must set secure-rng=true",
    ),
    (
        "no ledger dir",
        'partition-id=1 num-partitions=${FEDEQUITY_NUM_PARTITIONS:-3} secure-rng=true ledger-dir="/app/ledger"',
        "partition-id=1 num-partitions=${FEDEQUITY_NUM_PARTITIONS:-3} secure-rng=true",
        cp.check_topology,
        'supernode-1: node-config must set ledger-dir="/absolute/path" (got None)',
    ),
    (
        "ledger not on a volume",
        "      - supernode-2-ledger:/app/ledger\n",
        "",
        cp.check_topology,
        "superexec-clientapp-2: ledger-dir /app/ledger of supernode-2 is not a named volume",
    ),
    (
        "ledger volume shared",
        "      - supernode-2-ledger:/app/ledger\n",
        "      - supernode-1-ledger:/app/ledger\n",
        cp.check_topology,
        "superexec-clientapp-2: ledger volume supernode-1-ledger is shared with another node",
    ),
    (
        "ledger on a tmpfs",
        "      - supernode-2-ledger:/app/ledger\n",
        "      - supernode-2-ledger:/app/ledger\n    tmpfs:\n      - /app/ledger\n",
        cp.check_topology,
        "superexec-clientapp-2: ledger-dir /app/ledger of supernode-2 is a tmpfs",
    ),
    (
        "ledger volume in memory",
        "  supernode-2-ledger:\n",
        "  supernode-2-ledger:\n    driver_opts:\n      type: tmpfs\n      device: tmpfs\n",
        cp.check_topology,
        "superexec-clientapp-2: ledger-dir /app/ledger of supernode-2 is a tmpfs",
    ),
    (
        "dependency install on a SuperExec",
        "      - --superexec-auth-secret-file=/run/secrets/supernode-0-superexec-secret\n"
        "      - --health-server-address=127.0.0.1:8081\n",
        "      - --superexec-auth-secret-file=/run/secrets/supernode-0-superexec-secret\n"
        "      - --health-server-address=127.0.0.1:8081\n"
        "      - --allow-runtime-dependency-installation\n",
        cp.check_secure,
        "superexec-clientapp-0: installs dependencies at run time",
    ),
    (
        "a Flower service hidden behind an entrypoint",
        "  supernode-1:\n    <<: *supernode\n",
        "  supernode-1:\n    <<: *supernode\n    entrypoint: [flower-supernode]\n",
        cp.check_secure,
        "supernode-1: a Flower image with its own entrypoint escapes the checks",
    ),
    (
        "a Flower command posing as a one-shot helper",
        "  supernode-1:\n    <<: *supernode\n",
        "  supernode-1:\n    <<: *supernode\n    entrypoint: [flower-supernode, --insecure]\n"
        '    restart: "no"\n',
        cp.check_secure,
        "supernode-1: a Flower image with its own entrypoint escapes the checks",
    ),
    (
        "orphan SuperNode",
        "--runtime-api-address=supernode-2:9094",
        "--runtime-api-address=supernode-1:9094",
        cp.check_topology,
        "supernode-2: needs exactly one SuperExec, has 0",
    ),
    (
        "no healthcheck",
        "  healthcheck: *https-healthcheck\n  depends_on:",
        "  depends_on:",
        cp.check_operable,
        "supernode-0: no healthcheck",
    ),
    (
        "no restart",
        "  restart: unless-stopped\n  healthcheck: *https-healthcheck\n  depends_on:",
        "  healthcheck: *https-healthcheck\n  depends_on:",
        cp.check_operable,
        "supernode-2: no restart policy",
    ),
    (
        "state not persisted",
        "--database=/app/state/superlink.db",
        "--database=/tmp/superlink.db",
        cp.check_operable,
        "superlink: --database /tmp/superlink.db is not on a named volume",
    ),
    (
        "ledger volume left to the image user",
        "      - supernode-2-ledger:/volumes/supernode-2-ledger\n",
        "",
        cp.check_operable,
        "volume supernode-2-ledger: no one-shot init service gives it to the user",
    ),
    (
        "update check on",
        '  FLWR_DISABLE_UPDATE_CHECK: "1"\n',
        "",
        cp.check_offline,
        "superlink: environment FLWR_DISABLE_UPDATE_CHECK must be '1'",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "check", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_each_rule_catches_its_violation(
    tmp_path: Path, old: str, new: str, check: Check, expected: str
) -> None:
    assert check(cc.load(REPO / "docker-compose.yml")) == []
    problems = check(_mutated(tmp_path, old, new))
    assert any(expected in p for p in problems), problems


def test_image_pins_follow_pyproject_and_installed_flwr(tmp_path: Path) -> None:
    args = (REPO / "pyproject.toml", REPO / "docker" / "Dockerfile")
    assert cc.check_versions(cc.load(REPO / "docker-compose.yml"), *args, flwr.__version__) == []
    drifted = _mutated(tmp_path, "image: flwr/supernode:1.42.0", "image: flwr/supernode:1.41.0")
    assert cc.check_versions(drifted, *args, flwr.__version__) == [
        f"supernode-{i}: image flwr/supernode:1.41.0 is not pinned to flwr {flwr.__version__}"
        for i in range(3)
    ]


def test_certificates_cover_every_host_name_dialled(tmp_path: Path, bundle: TlsBundle) -> None:
    assert cc.check_tls_names(cc.load(REPO / "docker-compose.yml"), bundle) == []
    renamed = _mutated(
        tmp_path, "--runtime-api-address=superlink:8000", "--runtime-api-address=link:8000"
    )
    assert cc.check_tls_names(renamed, bundle) == [
        "superexec-serverapp: dials link, which no generated certificate serves"
    ]


def test_insecure_override_turns_everything_insecure(tmp_path: Path) -> None:
    merged = cc.load(REPO / "docker-compose.yml", REPO / "docker-compose.insecure.yml")
    assert cp.check_insecure_override(merged) == []
    assert "--insecure" not in BASE_TEXT
    partial = tmp_path / "override.yml"
    text = (REPO / "docker-compose.insecure.yml").read_text()
    partial.write_text(
        text.replace(
            "      - --insecure\n      - --runtime-api-address=supernode-1",
            "      - --runtime-api-address=supernode-1",
        )
    )
    merged = cc.load(REPO / "docker-compose.yml", partial)
    assert cp.check_insecure_override(merged) == [
        "superexec-clientapp-1: the insecure override leaves it on TLS (mixed setup)"
    ]


def test_the_insecure_override_is_held_to_the_same_topology(tmp_path: Path) -> None:
    override = tmp_path / "override.yml"
    text = (REPO / "docker-compose.insecure.yml").read_text()
    override.write_text(text.replace(
        "partition-id=2 num-partitions=${FEDEQUITY_NUM_PARTITIONS:-3} secure-rng=true",
        "partition-id=1 num-partitions=7"))  # fmt: skip
    problems = vc.structural_problems(insecure=override)
    assert "insecure override: supernode-2: node-config must set secure-rng=true" in problems
    assert (
        "insecure override: supernode-2: num-partitions=7, expected 3 (one per SuperNode)"
        in problems
    )


def test_interpolation_defaults_and_overrides() -> None:
    env = {"SUPERLINK_ADDRESS": "link.example.org:8000"}
    assert (
        cc.interpolate("--superlink=${SUPERLINK_ADDRESS:-superlink:8000}", {})
        == "--superlink=superlink:8000"
    )
    assert (
        cc.interpolate("--superlink=${SUPERLINK_ADDRESS:-superlink:8000}", env)
        == "--superlink=link.example.org:8000"
    )
    assert cc.interpolate("a$$b", {}) == "a$b"


REQUIRE_CLI = os.environ.get("FEDEQUITY_REQUIRE_COMPOSE_CLI") == "1"


@pytest.fixture(scope="module")
def compose_cli() -> None:
    if vc.compose_command() is None:
        if REQUIRE_CLI:
            pytest.fail(
                "FEDEQUITY_REQUIRE_COMPOSE_CLI=1 but docker-compose is not unpacked: "
                "python -m deploy.validate_compose --fetch"
            )
        pytest.skip("docker-compose 1.29.2 not fetched (python -m deploy.validate_compose --fetch)")


@pytest.mark.usefixtures("compose_cli")
@pytest.mark.parametrize(
    "files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.insecure.yml"]]
)
def test_docker_compose_config_accepts_the_files(files: list[str]) -> None:
    result = vc.compose_config([REPO / f for f in files])
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("compose_cli")
def test_docker_compose_config_rejects_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(
        BASE_TEXT.replace(
            "    restart: unless-stopped\n", "    restart: sometimes\n    retsart: no\n", 1
        )
    )
    result = vc.compose_config([bad])
    assert result.returncode != 0
    assert "retsart" in result.stderr
