"""The production images and compose topology (docker/), checked without Docker.

The compose file must name every service of the topology with a healthcheck on each long-running
one, route the `default` and `gpu` queues to workers (the GPU one reserving NVIDIA devices), run
the CeleryExecutor, and carry no credential: each comes from docker/.env (git-ignored) as a
required `${VAR:?...}`, and docker/.env.example names every variable. The images build on the
Airflow release and Python version that constraints.txt pins, and install with those constraints.
The checkers return findings, so the second half of the file can show that they catch mistakes.
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile*") if not p.name.endswith(".dockerignore"))

SERVICES = {
    "postgres", "redis", "minio", "minio-init", "airflow-init", "airflow-apiserver",
    "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker",
    "airflow-worker-gpu", "serving",
}  # fmt: skip
ONE_SHOT = {"airflow-init", "minio-init"}
# Names under which a credential hides (variables of .env and of the containers' environment).
SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|PASSPHRASE|FERNET|ACCESS_KEY|PRIVATE|CREDENTIAL|ROOT_USER"
    r"|_AUTH$|_KEY$|_KEYS$"
)
PLACEHOLDER = "change-me"
# `$$` is compose's escape for a literal `$` (expanded by the container's shell at run time).
REFERENCE = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)
# Applied with every ${...} masked as MASK: a password in a URL must be one whole reference.
MASK = "\x00"
URL_CREDENTIALS = re.compile(
    r"[a-z][a-z0-9+.-]*://(?P<user>[^/\s@:\"']*):(?P<password>[^/\s@\"']*)@"
)
SECRET_FLAG = re.compile(r"--?(?:requirepass|password|pass|token|secret|passphrase)[=\s]+(\S+)")
KNOWN_SECRET = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----")
RANDOM_LOOKING = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


# ---------------------------------------------------------------------------------- loading
def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def load_env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{ENV_EXAMPLE.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def load_constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.strip())] = version.split(";")[0].strip()
    return pins


def strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string of a YAML document (mapping keys included) with where it is."""
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            found += [(f"{path}/{key}", str(key))]
            found += strings(value, f"{path}/{key}")
        return found
    if isinstance(node, list):
        return [s for i, item in enumerate(node) for s in strings(item, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def references(text: str) -> list[tuple[str, str, str]]:
    """The compose variables `text` interpolates: (name, operator, argument)."""
    found = []
    for match in REFERENCE.finditer(text):
        if match["bare"]:
            found.append((match["bare"], "", ""))
        elif match["braced"] is not None:
            parsed = BRACED.match(match["braced"])
            assert parsed, f"malformed interpolation ${{{match['braced']}}}"
            found.append((parsed["name"], parsed["op"] or "", parsed["arg"] or ""))
    return found


def compose_variables(compose: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    variables: dict[str, list[tuple[str, str]]] = {}
    for _, text in strings(compose):
        for name, op, arg in references(text):
            variables.setdefault(name, []).append((op, arg))
    return variables


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


# --------------------------------------------------------------------------------- checkers
def only_references(value: str) -> bool:
    """True when nothing but `${...}` interpolations is left in `value`."""
    return bool(references(value)) and not re.sub(r"\$\{[^}]*\}", "", value).strip()


def secret_literals(compose: dict[str, Any]) -> list[str]:
    """Credentials written into the compose file instead of coming from the environment."""
    findings = []
    for name, service in (compose.get("services") or {}).items():
        for key, value in environment(service).items():
            if not SECRET_NAME.search(key) or only_references(value):
                continue
            paths = value.split(":")
            if value and all(p.startswith("/run/secrets/") for p in paths):
                continue  # a path to a mounted secret, not the secret
            findings.append(f"services/{name}/environment/{key}: literal {value!r}")
    texts = strings(compose)
    for name, service in (compose.get("services") or {}).items():
        # A list-form command splits a flag from its value: judge the joined line too.
        for field in ("command", "entrypoint"):
            if isinstance(service.get(field), list):
                texts.append((f"services/{name}/{field}", " ".join(map(str, service[field]))))
    for where, text in texts:
        bare = re.sub(r"\$\{[^}]*\}", "", text)
        for match in URL_CREDENTIALS.finditer(re.sub(r"\$\{[^}]*\}", MASK, text)):
            if match["password"] != MASK:
                findings.append(f"{where}: password in URL {match[0]!r}")
        for match in SECRET_FLAG.finditer(text):
            if not match[1].strip("\"'").startswith("$"):
                findings.append(f"{where}: secret on a command line {match[0]!r}")
        if KNOWN_SECRET.search(bare):
            findings.append(f"{where}: a key or private key literal")
        for token in RANDOM_LOOKING.findall(bare):
            if re.search(r"[0-9]", token) and re.search(r"[A-Za-z]", token):
                findings.append(f"{where}: random-looking literal {token[:6]}...")
    for name, uses in compose_variables(compose).items():
        if SECRET_NAME.search(name):
            findings += [
                f"${{{name}{op}{arg}}}: a credential must be required (`:?`), never defaulted"
                for op, arg in uses
                if op != ":?"
            ]
    return findings


def missing_healthchecks(compose: dict[str, Any]) -> list[str]:
    """Long-running services without a healthcheck, and waits on services that have none."""
    services = compose.get("services") or {}
    findings = []
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        test = check.get("test")
        disabled = check.get("disable") or test in (None, [], ["NONE"], "NONE")
        if name not in ONE_SHOT and disabled:
            findings.append(f"{name}: no healthcheck")
        depends = service.get("depends_on") or {}
        for target, condition in depends.items() if isinstance(depends, dict) else []:
            wanted = (condition or {}).get("condition")
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            if wanted != expected:
                findings.append(f"{name}: depends on {target} with {wanted!r}, not {expected!r}")
    return findings


def worker_queues(compose: dict[str, Any]) -> dict[str, set[str]]:
    """Celery workers and the queues each consumes."""
    workers = {}
    for name, service in (compose.get("services") or {}).items():
        args = command_args(service)
        if args[:2] == ["celery", "worker"]:
            queues: set[str] = set()
            for flag, value in zip(args, [*args[1:], ""], strict=True):
                if flag in ("--queues", "-q"):
                    queues |= set(value.split(","))
            workers[name] = queues or {"default"}
    return workers


def reserves_nvidia_gpus(service: dict[str, Any]) -> bool:
    devices = (
        (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {})
        .get("devices") or []
    )  # fmt: skip
    return any(
        d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices
    )


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1]}" if line.endswith("\\") else f"{pending} {line}"
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def base_images(path: Path) -> list[str]:
    """The external images a Dockerfile builds FROM (stage references and ARGs resolved)."""
    args: dict[str, str] = {}
    named: set[str] = set()
    images = []
    for keyword, rest in parse_dockerfile(path):
        if keyword == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args.setdefault(name.strip(), default.strip().strip("\"'"))
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), words[0])
            if len(words) >= 3 and words[1].upper() == "AS":
                named.add(words[2].lower())
            if image.lower() not in named:
                images.append(image)
    return images


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Each named build stage's instructions."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in parse_dockerfile(path):
        if keyword == "FROM":
            words = rest.split()
            current = found.setdefault(words[-1].lower(), []) if len(words) >= 3 else []
        current.append((keyword, rest))
    return found


def pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUN instructions."""
    found = []
    for keyword, rest in parse_dockerfile(path):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|\|\||;", rest):
            words = shlex.split(command)
            if words[:2] in (["pip", "install"], ["pip3", "install"]) or words[:4] == [
                "python", "-m", "pip", "install"
            ]:  # fmt: skip
                found.append(words[words.index("install") + 1 :])
    return found


def unpinned_requirements(args: list[str], pins: dict[str, str]) -> list[str]:
    """Requirements of one `pip install` that constraints.txt does not pin (or pins otherwise)."""
    findings = []
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url"}
    skip_next = False
    for arg in args:
        if skip_next or arg.startswith("-"):  # `-e` is a flag here: its project is judged next
            skip_next = arg in takes_value
            continue
        if arg.startswith("."):  # the project itself: its dependencies and requested extras
            extras = re.findall(r"\[([^\]]*)\]", arg)
            names = list(pyproject["dependencies"])
            for extra in ",".join(extras).split(","):
                names += pyproject["optional-dependencies"].get(extra.strip(), [])
        else:
            names = [arg]
        for text in names:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name == "secmlops":
                continue
            pinned = pins.get(name)
            if pinned is None:
                findings.append(f"{requirement.name}: not pinned in constraints.txt")
            elif requirement.specifier and not requirement.specifier.contains(pinned, True):
                findings.append(f"{text}: constraints.txt pins {pinned}")
    return findings


def constrained(args: list[str]) -> bool:
    """`-c constraints.txt` (or `--constraint=constraints.txt`) among a pip install's args."""
    pairs = zip(args, [*args[1:], ""], strict=True)
    return any(
        (flag in ("-c", "--constraint") and value == "constraints.txt")
        or flag == "--constraint=constraints.txt"
        for flag, value in pairs
    )


# ------------------------------------------------------------------------------------ tests
def test_every_service_of_the_topology_is_there():
    assert set(load_compose()["services"]) >= SERVICES


def test_long_running_services_have_healthchecks_and_waits_are_on_health():
    compose = load_compose()
    assert missing_healthchecks(compose) == []
    for name in SERVICES - ONE_SHOT - {"postgres", "redis", "minio"}:
        assert compose["services"][name].get("depends_on"), f"{name} waits for nothing"


def test_workers_serve_the_default_and_gpu_queues():
    compose = load_compose()
    services = compose["services"]
    workers = worker_queues(compose)
    assert workers["airflow-worker"] == {"default"}
    assert workers["airflow-worker-gpu"] == {"gpu"}
    assert reserves_nvidia_gpus(services["airflow-worker-gpu"])
    assert not reserves_nvidia_gpus(services["airflow-worker"])
    # CPU-only hosts can `up` without the GPU worker; the default worker is always there.
    assert "gpu" in services["airflow-worker-gpu"].get("profiles", [])
    assert not services["airflow-worker"].get("profiles")
    # The training queue is read when the dag-processor parses the DAG file; its default is a
    # queue that an always-on worker consumes.
    for name in ("airflow-dag-processor", "airflow-scheduler", "airflow-worker"):
        queue = environment(services[name])["SECMLOPS_TRAINING_QUEUE"]
        assert queue == "${SECMLOPS_TRAINING_QUEUE:-default}", name
    assert load_env_example()["SECMLOPS_TRAINING_QUEUE"] in workers["airflow-worker"]
    assert "queue=DEPLOYMENT.training_queue" in (ROOT / "dags/secmlops_training.py").read_text()


def test_airflow_runs_the_celery_executor_on_postgres_and_redis():
    services = load_compose()["services"]
    airflow = [name for name in services if name.startswith("airflow-")]
    assert len(airflow) >= 7
    for name in airflow:
        env = environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
        # SQLAlchemy 2 maps a bare postgresql:// to psycopg 3, which the image does not ship.
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith(
            "http://airflow-apiserver:8080/"
        )
        assert env["SECMLOPS_REGISTRY"].startswith("s3://"), name
    # Only the workers, which run the task bodies, hold private keys, one role's key per
    # service kind: the training workers sign as trainer and gate, the release worker (the
    # production move, after a person approved) as approver only.
    trainers = ("airflow-worker", "airflow-worker-gpu")
    for name, service in services.items():
        env, secrets = environment(service), service.get("secrets", [])
        for role in ("trainer", "gate"):
            assert (f"SECMLOPS_{role.upper()}_KEY" in env) == (name in trainers), (name, role)
            assert (f"{role}_key" in secrets) == (name in trainers), (name, role)
        signs_bundles = "SECMLOPS_TRAINER_OPENSSF_KEY" in env
        assert signs_bundles == (name in trainers), name  # the trainer's ECDSA key travels with it
        assert ("trainer_openssf_key" in secrets) == (name in trainers), name
        approves = name == "airflow-worker-release"
        assert ("SECMLOPS_APPROVER_KEY" in env) == approves, name
        assert ("approver_key" in secrets) == approves, name
        assert "SECMLOPS_SIGNING_KEY" not in env, name
    release = services["airflow-worker-release"]
    assert "release" in command_args(release)
    assert environment(release)["SECMLOPS_RELEASE_QUEUE"] == "release"


def test_serving_follows_the_registry_and_logs_where_monitoring_reads():
    services = load_compose()["services"]
    serving, worker = environment(services["serving"]), environment(services["airflow-worker"])
    command = " ".join(command_args(services["serving"]))
    assert "secmlops serve --host 0.0.0.0" in command
    # `secmlops serve` takes the log location from its option only: pass the monitored one.
    assert '--inference-log "$${SECMLOPS_INFERENCE_LOG}"' in command
    for key in ("SECMLOPS_INFERENCE_LOG", "SECMLOPS_REGISTRY", "SECMLOPS_MODEL_NAME"):
        assert serving[key] == worker[key], key
    assert serving["SECMLOPS_SERVING_TOKEN"].startswith("${SECMLOPS_SERVING_TOKEN:?")
    # Serving verifies the whole chain (every role's public key), and holds no private key.
    pubs = ["data_owner_pub", "trainer_pub", "gate_pub", "approver_pub"]
    assert serving["SECMLOPS_TRUSTED_KEYS"] == ":".join(f"/run/secrets/{p}" for p in pubs)
    assert services["serving"]["secrets"] == pubs


def test_no_credential_is_written_in_the_compose_file():
    assert secret_literals(load_compose()) == []


def test_env_example_names_every_variable_and_holds_no_secret():
    example = load_env_example()
    variables = compose_variables(load_compose())
    assert set(variables) - set(example) == set(), "variables missing from .env.example"
    assert set(example) - set(variables) == set(), ".env.example names unused variables"
    for name, value in example.items():
        if SECRET_NAME.search(name):
            assert value == PLACEHOLDER, f"{name}: the example must hold {PLACEHOLDER!r}"
        for op, default in variables[name]:
            if op in ("-", ":-"):
                assert default == value, f"{name}: compose default {default!r} != example"


def test_the_real_env_file_and_keys_are_git_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    keys_dir = DOCKER / load_env_example()["SECMLOPS_KEYS_DIR"]
    for path in (DOCKER / ".env", keys_dir / "model-signer.key"):
        relative = str(path.resolve().relative_to(ROOT))
        ignored = subprocess.run(["git", "check-ignore", "-q", relative], cwd=ROOT)
        assert ignored.returncode == 0, f"{relative} is not git-ignored"
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", relative], cwd=ROOT, capture_output=True
        )
        assert tracked.returncode != 0, f"{relative} is committed"


def test_images_build_on_the_pinned_airflow_and_python():
    pins = load_constraints()
    python = re.search(r"Python (\d+\.\d+)", (ROOT / "constraints.txt").read_text())
    assert python, "constraints.txt names the Python version it was resolved on"
    expected = f"apache/airflow:{pins['apache-airflow']}-python{python[1]}"
    assert DOCKERFILES, "no Dockerfile in docker/"
    for dockerfile in DOCKERFILES:
        assert base_images(dockerfile) == [expected], dockerfile.name


def test_images_install_with_the_committed_constraints():
    pins = load_constraints()
    for dockerfile in DOCKERFILES:
        installs = pip_installs(dockerfile)
        assert installs, f"{dockerfile.name} installs nothing"
        text = dockerfile.read_text()
        assert re.search(r"^COPY\b.*\bconstraints\.txt\b", text, re.M), dockerfile.name
        for args in installs:
            assert constrained(args), args
            assert not {"-U", "--upgrade"} & set(args), args
            assert unpinned_requirements(args, pins) == [], args
        # The Celery broker client, the provider and the database driver the compose file uses.
        for needed in ("apache-airflow-providers-celery", "celery", "redis", "psycopg2-binary"):
            assert needed in pins, f"{needed} is not pinned in constraints.txt"


def test_versions_written_in_docker_files_agree_with_constraints():
    pins = load_constraints()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for path in [*DOCKERFILES, COMPOSE_FILE, ENV_EXAMPLE]:
        for name, version in re.findall(r"([A-Za-z0-9][A-Za-z0-9_.-]*)==([0-9][^\s\"',;\]]*)",
                                        path.read_text()):  # fmt: skip
            assert pins.get(canonicalize_name(name)) == version, f"{path.name}: {name}=={version}"
    # Our own images carry the project's version; the build targets exist.
    services = load_compose()["services"]
    targets = set().union(*(stages(p) for p in DOCKERFILES))
    for name in ("airflow-worker", "airflow-worker-gpu", "serving"):
        image = services[name]["image"]
        assert image.endswith(f":{project['version']}}}"), f"{name}: {image}"
        target = (services[name].get("build") or services["airflow-worker"]["build"])["target"]
        assert target in targets, f"{name}: build target {target!r}"
    assert services["airflow-worker-gpu"]["build"]["target"] == "gpu"


def test_the_gpu_image_exposes_the_gpus_to_cuda_and_images_run_as_airflow():
    dockerfile = DOCKER / "Dockerfile"
    gpu_env = " ".join(rest for keyword, rest in stages(dockerfile)["gpu"] if keyword == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=all" in gpu_env
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*compute", gpu_env)
    for path in DOCKERFILES:
        users = [rest for keyword, rest in parse_dockerfile(path) if keyword == "USER"]
        assert users and users[-1] == "airflow", f"{path.name} must end as the airflow user"


# ------------------------------------------------------------------ the checkers can fail
def test_checkers_catch_a_literal_password_and_a_missing_healthcheck():
    compose = load_compose()
    broken = copy.deepcopy(compose)
    broken["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2-hunter2"
    broken["services"]["serving"]["environment"]["SECMLOPS_SERVING_TOKEN"] = (
        "${SECMLOPS_SERVING_TOKEN:-0123456789abcdef}"
    )
    broken["services"]["airflow-worker"]["environment"]["AIRFLOW__CELERY__BROKER_URL"] = (
        "redis://:plaintext@redis:6379/0"
    )
    broken["services"]["redis"]["command"] = ["redis-server", "--requirepass", "plaintext"]
    broken["services"]["minio"]["environment"]["EXTRA"] = "AKIAABCDEFGHIJKLMNOP"
    del broken["services"]["airflow-scheduler"]["healthcheck"]
    broken["services"]["serving"]["depends_on"]["minio-init"]["condition"] = "service_started"
    findings = secret_literals(broken)
    for expected in (
        "postgres/environment/POSTGRES_PASSWORD",
        "SECMLOPS_SERVING_TOKEN:-0123456789abcdef",
        "password in URL",
        "secret on a command line",
        "a key or private key literal",
    ):
        assert any(expected in finding for finding in findings), (expected, findings)
    health = missing_healthchecks(broken)
    assert "airflow-scheduler: no healthcheck" in health
    assert any(f.startswith("serving: depends on minio-init") for f in health)
    assert secret_literals(compose) == [] and missing_healthchecks(compose) == []


def test_checkers_catch_a_wrong_base_image_and_unpinned_packages(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG AIRFLOW_IMAGE=apache/airflow:3.2.0-python3.12\n"
        "FROM ${AIRFLOW_IMAGE} AS base\n"
        "RUN pip install --no-cache-dir torch==2.0.0 leftpad \\\n"
        "    && pip check\n"
        "FROM base AS gpu\n"
    )
    assert base_images(dockerfile) == ["apache/airflow:3.2.0-python3.12"]
    assert set(stages(dockerfile)) == {"base", "gpu"}
    (args,) = pip_installs(dockerfile)
    findings = unpinned_requirements(args, load_constraints())
    assert any(f.startswith("torch==2.0.0: constraints.txt pins") for f in findings)
    assert "leftpad: not pinned in constraints.txt" in findings
    assert worker_queues({"services": {"w": {"command": "celery worker -q gpu,default"}}}) == {
        "w": {"gpu", "default"}
    }
