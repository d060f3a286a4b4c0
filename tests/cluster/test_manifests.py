"""cluster/ agrees with the project: entry points, configs, Ray/Python versions, deps, exposure.

Fast and offline: YAML is parsed, configs are loaded, and Ray's own launcher schema and
runtime-env validators run. No Ray instance is started.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from orpo.config import load_config
from pipelines.config import Config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
CI_PYTHON = "3.11"  # the CI interpreter (the brief for .ci/run); image tags must match it
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard + job API, Ray client
WORLD = ("0.0.0.0/0", "::/0")
LAUNCHER_CONFIGS = ["aws-gpu.yaml", "gcp-gpu.yaml"]
EXPECTED_FILES = [
    "README.md",
    "runtime_env.yaml",
    "Dockerfile",
    *LAUNCHER_CONFIGS,
    "kuberay/raycluster.yaml",
    "kuberay/rayjob.yaml",
    "kuberay/shared-storage.yaml",
]
RECIPES = [
    "configs/mistral7b_orpo_ultrafeedback.yaml",
    "configs/llama2_7b_orpo.yaml",
    "configs/phi2_orpo.yaml",
    "configs/llama3_8b_instruct_simpo.yaml",
]
# rayproject/ray:<ray>-py<major><minor>[-<accelerator>]
RAY_IMAGE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)(?:-(?P<accel>[\w.]+))?$"
)


# ---------------------------------------------------------------- helpers


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pyproject_ray() -> Requirement:
    reqs = [Requirement(d) for d in pyproject()["project"]["dependencies"]]
    return next(r for r in reqs if r.name == "ray")


def docs(relative: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / relative).read_text()) if d is not None]


def kind(k: str) -> list[dict[str, Any]]:
    return [
        d
        for f in sorted(CLUSTER.rglob("*.yaml"))
        for d in docs(str(f.relative_to(CLUSTER)))
        if d.get("kind") == k
    ]


def walk(node: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair of a nested YAML document, leaves included."""
    yield key, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)


def ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(name, RayCluster spec) of the RayCluster and of the cluster each RayJob brings up."""
    specs = [(f"RayCluster {d['metadata']['name']}", d["spec"]) for d in kind("RayCluster")]
    specs += [
        (f"RayJob {d['metadata']['name']}", d["spec"]["rayClusterSpec"]) for d in kind("RayJob")
    ]
    return specs


def images() -> list[tuple[str, str]]:
    """(file, image) for every image named in cluster/: YAML `image:` keys and Dockerfile FROM."""
    found = []
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for doc in docs(str(path.relative_to(CLUSTER))):
            found += [(path.name, v) for k, v in walk(doc) if k == "image" and isinstance(v, str)]
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            found.append(("Dockerfile", line.split()[1]))
    return found


def logical_lines(text: str, comments: bool) -> list[str]:
    """Lines with shell continuations joined; with ``comments`` the leading ``#`` is dropped."""
    lines = [re.sub(r"^\s*#", "", line) if comments else line for line in text.splitlines()]
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
        else:
            joined.append(current + line)
            current = ""
    return joined


def markdown_code(text: str) -> str:
    return "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL))


def documented_commands() -> list[tuple[str, str]]:
    """(source, "python -m ...") for every command in the guide's code blocks, the comments and
    values of cluster/ files, the RayJob entrypoint and the recipes' headers."""
    texts = [("cluster/README.md", markdown_code((CLUSTER / "README.md").read_text()), False)]
    for path in sorted(CLUSTER.rglob("*.yaml")) + [CLUSTER / "Dockerfile"]:
        texts.append((str(path.relative_to(REPO)), path.read_text(), True))
    texts += [(recipe, (REPO / recipe).read_text(), True) for recipe in RECIPES]
    commands = []
    for source, text, comments in texts:
        for line in logical_lines(text, comments):
            match = re.search(r"python -m [\w.]+.*", line)
            if match:
                commands.append((source, match.group(0).strip()))
    for job in kind("RayJob"):
        commands.append((f"RayJob {job['metadata']['name']}", job["spec"]["entrypoint"]))
    return commands


def parse_command(command: str) -> tuple[str, str | None, list[str]]:
    """``python -m MODULE [--config PATH] [k=v ...]`` -> (module, config, overrides)."""
    tokens = shlex.split(command, comments=True)
    assert tokens[:2] == ["python", "-m"], command
    module, rest = tokens[2], tokens[3:]
    config = rest[rest.index("--config") + 1] if "--config" in rest else None
    overrides = [t for t in rest if "=" in t and not t.startswith("-")]
    return module, config, overrides


def world_open(rule: dict[str, Any], port: int) -> bool:
    """Whether an EC2 IpPermission admits ``port`` from anywhere on the internet."""
    cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
        r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])
    ]
    if not any(c in WORLD for c in cidrs):
        return False
    if str(rule.get("IpProtocol")) == "-1":
        return True
    return rule.get("FromPort", 0) <= port <= rule.get("ToPort", 65535)


def pip_packages(runtime_env: dict[str, Any]) -> list[str]:
    pip = runtime_env["pip"]
    return pip["packages"] if isinstance(pip, dict) else pip


def canonical(requirements: list[str]) -> list[str]:
    return sorted(str(Requirement(r)) for r in requirements)


# ---------------------------------------------------------------- files parse


@pytest.mark.parametrize("relative", EXPECTED_FILES)
def test_expected_file_exists(relative):
    assert (CLUSTER / relative).is_file(), f"cluster/{relative} is missing"


@pytest.mark.parametrize(
    "path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER))
)
def test_every_yaml_parses_into_mappings(path):
    parsed = docs(str(path.relative_to(CLUSTER)))
    assert parsed, f"{path} has no documents"
    assert all(isinstance(d, dict) for d in parsed)


def test_kubernetes_documents_have_api_version_kind_and_name():
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in docs(str(path.relative_to(CLUSTER))):
            assert (
                doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name")
            ), path


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(docs(name)[0]))


# ---------------------------------------------------------------- versions


def test_images_are_found_everywhere():
    sources = {source for source, _ in images()}
    assert sources == {
        "aws-gpu.yaml",
        "gcp-gpu.yaml",
        "raycluster.yaml",
        "rayjob.yaml",
        "Dockerfile",
    }
    assert len(images()) == 7  # 2 launchers, 2 pods per KubeRay cluster spec, Dockerfile FROM


@pytest.mark.parametrize("source,image", images())
def test_image_ray_and_python_versions_match_pyproject_and_ci(source, image):
    match = RAY_IMAGE.match(image)
    assert match, f"{source}: {image!r} is not a versioned rayproject/ray image"
    ray_version = Version(match["ray"])
    assert pyproject_ray().specifier.contains(ray_version), (
        f"{source}: {image} has Ray {ray_version}, outside pyproject's {pyproject_ray().specifier}"
    )
    python = f"{match['major']}.{match['minor']}"
    assert python == CI_PYTHON, f"{source}: {image} is Python {python}, CI runs {CI_PYTHON}"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(python)
    assert match["accel"] == "gpu" or re.fullmatch(r"cu\d+", match["accel"] or ""), (
        f"{source}: {image} is no GPU image"
    )


def test_kuberay_ray_version_equals_the_image_tag():
    for name, spec in ray_cluster_specs():
        pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        tags = {
            c["image"].split(":")[1].split("-")[0]
            for p in pods
            for c in p["template"]["spec"]["containers"]
        }
        assert tags == {spec["rayVersion"]}, name
        assert pyproject_ray().specifier.contains(spec["rayVersion"]), name


def runtime_envs() -> list[tuple[str, dict[str, Any]]]:
    envs = [("cluster/runtime_env.yaml", docs("runtime_env.yaml")[0])]
    envs += [
        (f"RayJob {j['metadata']['name']}", yaml.safe_load(j["spec"]["runtimeEnvYAML"]))
        for j in kind("RayJob")
    ]
    return envs


@pytest.mark.parametrize(
    "name,runtime_env", runtime_envs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_runtime_env_pip_is_pyprojects_dependencies(name, runtime_env):
    assert canonical(pip_packages(runtime_env)) == canonical(
        pyproject()["project"]["dependencies"]
    ), f"{name}: pip packages differ from pyproject.toml [project] dependencies"


def test_every_ray_requirement_string_agrees_with_pyproject():
    """Any `ray[...]` spec written anywhere in cluster/ (pip lists, setup commands)."""
    spec = re.compile(r"\bray(\[[\w,]+\])?\s*(==|>=|~=|<)\s*[\d.]+(\s*,\s*(<|<=|!=)\s*[\d.]+)*")
    found = []
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file():
            found += [m.group(0) for m in spec.finditer(path.read_text())]
    assert found, "expected the ray requirement in the runtime envs"
    for text in found:
        requirement = Requirement(text.replace(" ", ""))
        pins = [s.version for s in requirement.specifier if s.operator == "=="]
        if pins:
            assert all(pyproject_ray().specifier.contains(p) for p in pins), text
        else:
            assert requirement.specifier == pyproject_ray().specifier, text


# ---------------------------------------------------------------- entry points and configs


def test_commands_are_found():
    commands = documented_commands()
    modules = {parse_command(c)[0] for _, c in commands}
    assert len(commands) >= 10 and modules == {"pipelines.train"}, commands


@pytest.mark.parametrize("source,command", documented_commands())
def test_documented_command_names_a_real_module_and_a_loadable_config(source, command):
    module, config, overrides = parse_command(command)
    module_path = REPO / Path(*module.split("."))
    assert module_path.with_suffix(".py").is_file() or (module_path / "__main__.py").is_file(), (
        f"{source}: `python -m {module}` names no module in the repo"
    )
    assert config is not None, f"{source}: {command!r} gives no --config"
    assert (REPO / config).is_file(), f"{source}: {config} does not exist"
    if module == "pipelines.train":
        load_config(Config, REPO / config, overrides)


def test_rayjob_entrypoint_runs_a_gpu_recipe():
    (job,) = kind("RayJob")
    module, config, overrides = parse_command(job["spec"]["entrypoint"])
    assert (module, overrides) == ("pipelines.train", [])
    assert config in RECIPES
    assert load_config(Config, REPO / config).scaling.use_gpu


# ---------------------------------------------------------------- runtime envs


@pytest.mark.parametrize(
    "name,runtime_env", runtime_envs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_runtime_env_is_valid_and_carries_the_env_vars(name, runtime_env):
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)  # Ray's own validation (types, known fields, URIs)
    env = runtime_env["env_vars"]
    assert env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1", name
    assert env["TOKENIZERS_PARALLELISM"] == "false", name
    assert env["HF_HOME"], name
    assert all(isinstance(v, str) for v in env.values()), f"{name}: env var values must be strings"
    assert "HF_TOKEN" not in env, (
        f"{name}: secrets belong in the nodes' environment, not the runtime env"
    )


def test_runtime_env_file_excludes_the_heavy_and_private_paths():
    excludes = docs("runtime_env.yaml")[0]["excludes"]
    for required in (".venv", ".git", "runs/"):
        assert required in excludes
    assert "working_dir" not in docs("runtime_env.yaml")[0], "working_dir comes from --working-dir"


def test_rayjob_runs_once_and_cleans_up():
    (job,) = kind("RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    working_dir = yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    assert re.match(r"^(https|s3|gs)://.+\.zip$", working_dir), working_dir
    assert "@" not in working_dir.split("://")[1].split("/")[0], (
        "no credentials in the working_dir URL"
    )


def test_job_runtime_env_merges_with_the_one_pipelines_train_passes(monkeypatch):
    """Under `ray job submit`, ray.init refuses a driver runtime_env that repeats the job's keys
    ("Failed to merge the Job's runtime env", ray/_private/worker.py). Set up the driver's
    environment as Ray's JobSupervisor does, capture what pipelines.train hands to ray.init, and
    merge the two the way ray.init does."""
    import json
    import os

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    from ray.runtime_env.runtime_env import _merge_runtime_env

    from pipelines import train

    job_env = docs("runtime_env.yaml")[0]
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setenv(
        RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": job_env, "metadata": {}})
    )
    for key, value in job_env["env_vars"].items():  # the job's env vars reach the driver process
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    captured: dict[str, Any] = {}
    monkeypatch.setattr(train.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(train.ray, "init", lambda *args, **kwargs: captured.update(kwargs))
    train.init_ray(load_config(Config, REPO / RECIPES[0]))
    assert captured, "pipelines.train did not call ray.init"
    merged = _merge_runtime_env(job_env, captured.get("runtime_env"))
    assert merged is not None, (
        f"ray.init(runtime_env={captured.get('runtime_env')}) conflicts with the job's runtime env "
        "(same env var keys): the driver would fail under "
        "`ray job submit --runtime-env cluster/runtime_env.yaml`"
    )
    assert merged["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.1"


# ---------------------------------------------------------------- exposure


def test_world_open_detects_an_exposed_dashboard():
    """The check below can fail: a rule opening 8000-9000 to the world exposes 8265."""
    rule = {
        "IpProtocol": "tcp",
        "FromPort": 8000,
        "ToPort": 9000,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
    }
    assert world_open(rule, 8265) and not world_open(rule, 6379)
    assert world_open({"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, 10001)
    assert not world_open({**rule, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}, 8265)


def test_aws_security_group_opens_no_ray_port_to_the_world():
    rules = docs("aws-gpu.yaml")[0]["provider"]["security_group"].get("IpPermissions", [])
    node_types = docs("aws-gpu.yaml")[0]["available_node_types"].values()
    assert not any("SecurityGroupIds" in t["node_config"] for t in node_types), (
        "review custom groups by hand"
    )
    for rule in rules:
        for port in RAY_PORTS:
            assert not world_open(rule, port), f"port {port} open to the world: {rule}"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_dashboard_on_localhost_with_token_auth(name):
    config = docs(name)[0]
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    for command in [
        c
        for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
        if "ray start" in c
    ]:
        assert "export RAY_AUTH_MODE=token" in command, command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "0.0.0.0" not in yaml.safe_dump(config)


def test_no_kubernetes_service_is_reachable_from_outside():
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for doc in docs(str(path.relative_to(CLUSTER))):
            assert doc.get("kind") not in ("Ingress", "Route", "Gateway"), path
            for key, value in walk(doc):
                if key in ("type", "serviceType") and isinstance(value, str):
                    assert value not in ("LoadBalancer", "NodePort"), f"{path}: {key}: {value}"


def test_kuberay_heads_are_clusterip_with_token_auth():
    for name, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
        assert spec["authOptions"]["mode"] == "token", name
        host = head["rayStartParams"].get("dashboard-host", "0.0.0.0")  # KubeRay's default
        # 0.0.0.0 only behind ClusterIP + token (RayJob: the operator polls the job API).
        assert host == "127.0.0.1" or (host == "0.0.0.0" and name.startswith("RayJob")), (
            f"{name}: {host}"
        )
    (cluster,) = kind("RayCluster")
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"


# ---------------------------------------------------------------- capacity


def gpu_nodes() -> list[tuple[str, float, float, int]]:
    """(cluster, GPUs per node, CPUs per node, most nodes) of every GPU worker type."""
    nodes = []
    for name in LAUNCHER_CONFIGS:
        worker = docs(name)[0]["available_node_types"]["gpu_worker"]
        nodes.append(
            (name, worker["resources"]["GPU"], worker["resources"]["CPU"], worker["max_workers"])
        )
    for name, spec in ray_cluster_specs():
        for group in spec["workerGroupSpecs"]:
            (container,) = group["template"]["spec"]["containers"]
            limits = container["resources"]["limits"]
            nodes.append(
                (name, float(limits["nvidia.com/gpu"]), float(limits["cpu"]), group["maxReplicas"])
            )
    return nodes


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_fits_one_node_of_every_cluster(recipe):
    cfg = load_config(Config, REPO / recipe)
    workers, per_worker = cfg.scaling.num_workers, cfg.scaling.resources_per_worker
    for cluster, gpus, cpus, most_nodes in gpu_nodes():
        assert most_nodes >= 1, cluster
        assert workers * per_worker["GPU"] <= gpus, (
            f"{recipe} needs more GPUs than one {cluster} node"
        )
        # PACK on one node, and CPUs left over for Ray Data's tokenization.
        assert workers * per_worker["CPU"] < cpus, f"{recipe} leaves {cluster} no CPU for Ray Data"
