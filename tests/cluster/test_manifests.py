"""cluster/ agrees with the project: entry points, configs, Ray/Python versions, deps, exposure,
pod security (securityContext, NetworkPolicy, pinned images, shared storage) and secrets.

Fast and offline: YAML is parsed, configs are loaded, and Ray's own launcher schema and
runtime-env validators run. No Ray instance is started.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import sys
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
    "kuberay/networkpolicy.yaml",
]
RECIPES = [
    "configs/mistral7b_orpo_ultrafeedback.yaml",
    "configs/llama2_7b_orpo.yaml",
    "configs/phi2_orpo.yaml",
    "configs/llama3_8b_instruct_simpo.yaml",
]
# rayproject/ray:<ray>-py<major><minor>[-<accelerator>][@sha256:<digest>]
DIGEST = r"@sha256:[0-9a-f]{64}"
RAY_IMAGE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)(?:-(?P<accel>[\w.]+))?"
    rf"(?:{DIGEST})?$"
)
# The line above an image that is pinned by tag only (no digest could be looked up offline).
PIN_COMMENT = "# pin: replace with @sha256:<digest> from `docker buildx imagetools inspect`"
RAY_UID, RAY_GID = 1000, 100  # the rayproject images' `ray` user and its `users` group


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
    # 2 launchers, 2 pods per KubeRay cluster spec, the RayJob's submitter, Dockerfile FROM
    assert len(images()) == 8


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


# ---------------------------------------------------------------- pod security


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod template) of every pod KubeRay creates from cluster/: heads, workers, submitter."""
    pods = []
    for name, spec in ray_cluster_specs():
        pods.append((f"{name} head", spec["headGroupSpec"]["template"]))
        pods += [(f"{name} {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    for job in kind("RayJob"):
        if "submitterPodTemplate" in job["spec"]:
            pods.append(
                (f"RayJob {job['metadata']['name']} submitter", job["spec"]["submitterPodTemplate"])
            )
    return pods


def container_problems(container_sc: dict[str, Any] | None, pod_sc: dict[str, Any]) -> list[str]:
    """What a container's effective securityContext (its own over the pod's) gets wrong."""
    sc = container_sc or {}
    effective = {**pod_sc, **sc}
    problems = []
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        problems.append("privileged")
    capabilities = sc.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        problems.append("capabilities do not drop ALL")
    if capabilities.get("add"):
        problems.append(f"adds capabilities {capabilities['add']}")
    if effective.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if effective.get("runAsUser") == 0 or effective.get("runAsGroup") == 0:
        problems.append("runs as uid or gid 0")
    if (effective.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    return problems


def test_pod_templates_are_found():
    names = [n for n, _ in pod_templates()]
    assert len(names) == 5, names  # RayCluster head + gpu, RayJob head + gpu + submitter
    # Without a submitterPodTemplate KubeRay's default submitter has no securityContext at all.
    assert any(n.endswith("submitter") for n in names), "the RayJob needs a submitterPodTemplate"


def test_container_problems_finds_each_missing_field():
    """The check below can fail: the stock manifests (no securityContext) get every complaint."""
    assert len(container_problems(None, {})) == 4
    good_pod = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    good = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container_problems(good, good_pod) == []
    assert container_problems({**good, "runAsUser": 0}, good_pod) == ["runs as uid or gid 0"]
    assert container_problems({**good, "privileged": True}, good_pod) == ["privileged"]
    assert container_problems(good, {**good_pod, "seccompProfile": {"type": "Unconfined"}})


@pytest.mark.parametrize(
    "name,template", pod_templates(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_pod_runs_as_non_root_without_privileges(name, template):
    spec = template["spec"]
    pod_sc = spec.get("securityContext") or {}
    assert pod_sc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
    assert (pod_sc.get("runAsUser"), pod_sc.get("runAsGroup"), pod_sc.get("fsGroup")) == (
        RAY_UID,
        RAY_GID,
        RAY_GID,
    ), f"{name}: runAsUser / runAsGroup / fsGroup must be the image's ray:users"
    assert (pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", name
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
    containers = spec["containers"] + spec.get("initContainers", [])
    for container in containers:
        problems = container_problems(container.get("securityContext"), pod_sc)
        assert not problems, f"{name} / {container['name']}: {problems}"
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp for Ray"
    assert all("hostPath" not in v for v in spec.get("volumes", [])), f"{name}: no hostPath volumes"


@pytest.mark.parametrize(
    "name,spec", ray_cluster_specs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_the_autoscaler_sidecar_is_locked_down_too(name, spec):
    if not spec.get("enableInTreeAutoscaling"):
        return
    head_sc = spec["headGroupSpec"]["template"]["spec"].get("securityContext") or {}
    sidecar_sc = (spec.get("autoscalerOptions") or {}).get("securityContext")
    assert not container_problems(sidecar_sc, head_sc), f"{name}: autoscalerOptions.securityContext"


@pytest.mark.parametrize(
    "name,template", pod_templates(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_service_account_token_only_where_the_api_is_used(name, template):
    """Only the RayCluster head talks to the Kubernetes API (its in-tree autoscaler sidecar)."""
    (cluster,) = kind("RayCluster")
    autoscaler_head = name == f"RayCluster {cluster['metadata']['name']} head" and cluster[
        "spec"
    ].get("enableInTreeAutoscaling")
    if autoscaler_head:
        return
    assert template["spec"].get("automountServiceAccountToken") is False, name


# ---------------------------------------------------------------- network policy


def label_selected(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics for matchLabels / matchExpressions."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


NAMESPACE = "ml"  # where the manifests are applied (they name no namespace)
Pod = tuple[str, dict[str, str]]  # (namespace, labels)


def peer_selects(peer: dict[str, Any], pod: Pod) -> bool:
    """Whether a NetworkPolicy peer (in a policy of NAMESPACE) selects ``pod``. ipBlock peers are
    for traffic leaving the pod network: they never select a pod here."""
    namespace, labels = pod
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": namespace}
        if not label_selected(peer["namespaceSelector"], ns_labels):
            return False
    elif namespace != NAMESPACE:
        return False
    return label_selected(peer.get("podSelector", {}), labels)


def port_allowed(rule: dict[str, Any], port: int) -> bool:
    ports = rule.get("ports")
    return not ports or any(
        p.get("protocol", "TCP") == "TCP"
        and (p.get("port") is None or p["port"] <= port <= p.get("endPort", p["port"]))
        for p in ports
    )


def traffic_allowed(src: Pod, dst: Pod, port: int) -> bool:
    """Whether every NetworkPolicy in cluster/ lets ``src`` open a TCP connection to ``dst:port``:
    egress of the source and ingress of the destination must both admit it (policies add up)."""
    policies = [p["spec"] for p in kind("NetworkPolicy")]

    def direction(pod: Pod, policy_type: str, rules_key: str, peers_key: str, other: Pod) -> bool:
        selecting = [
            p
            for p in policies
            if pod[0] == NAMESPACE
            and label_selected(p["podSelector"], pod[1])
            and policy_type in p.get("policyTypes", ["Ingress"])
        ]
        if not selecting:
            return True  # no policy isolates this pod in this direction
        return any(
            port_allowed(rule, port)
            and (
                peers_key not in rule or any(peer_selects(peer, other) for peer in rule[peers_key])
            )
            for p in selecting
            for rule in p.get(rules_key) or []
        )

    return direction(src, "Egress", "egress", "to", dst) and direction(
        dst, "Ingress", "ingress", "from", src
    )


def ray_pods() -> dict[str, list[Pod]]:
    """The labels KubeRay gives each cluster's pods: its own (ray.io/*) plus the templates'. A
    RayJob's cluster is named <job>-<random suffix>."""
    clusters = {}
    for name, spec in ray_cluster_specs():
        cluster_name = name.split()[1] + ("-x7k2q" if name.startswith("RayJob") else "")
        groups = [("head", spec["headGroupSpec"])] + [
            ("worker", g) for g in spec["workerGroupSpecs"]
        ]
        clusters[name] = [
            (
                NAMESPACE,
                {
                    **(group["template"].get("metadata", {}).get("labels") or {}),
                    "ray.io/cluster": cluster_name,
                    "ray.io/node-type": node_type,
                    "ray.io/is-ray-node": "yes",
                },
            )
            for node_type, group in groups
        ]
    return clusters


def submitter() -> Pod:
    (job,) = kind("RayJob")
    labels = job["spec"].get("submitterPodTemplate", {}).get("metadata", {}).get("labels") or {}
    return NAMESPACE, {**labels, "ray.io/originated-from-crd": "RayJob"}


OPERATOR: Pod = ("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
BYSTANDER: Pod = (NAMESPACE, {"app": "notebook"})  # any other pod in the namespace
KUBE_DNS: Pod = ("kube-system", {"k8s-app": "kube-dns"})
RAY_INTERNAL_PORTS = (6379, 8076, 10002, 19999, 52365)  # GCS, object manager, workers, agent


def test_traffic_allowed_without_policies_allows_everything(monkeypatch):
    """The evaluator can fail: with no NetworkPolicy (the old manifests) a bystander reaches GCS."""
    real_kind = kind
    monkeypatch.setattr(
        sys.modules[__name__], "kind", lambda k: [] if k == "NetworkPolicy" else real_kind(k)
    )
    head = ray_pods()[ray_cluster_specs()[0][0]][0]
    assert traffic_allowed(BYSTANDER, head, 6379)


def test_network_policies_isolate_every_ray_pod_both_ways():
    policies = [p["spec"] for p in kind("NetworkPolicy")]
    assert policies, "cluster/kuberay/networkpolicy.yaml has no NetworkPolicy"
    for name, pods in ray_pods().items():
        for pod in pods:
            types = {
                t
                for p in policies
                if label_selected(p["podSelector"], pod[1])
                for t in p.get("policyTypes", [])
            }
            assert {"Ingress", "Egress"} <= types, f"{name}: {pod[1]} is not isolated: {types}"
    (cluster,) = kind("RayCluster")
    assert any(
        (p["podSelector"].get("matchLabels") or {})
        == {"ray.io/cluster": cluster["metadata"]["name"]}
        for p in policies
    ), "select the RayCluster's pods by KubeRay's ray.io/cluster label"
    assert {"Ingress", "Egress"} <= {
        t
        for p in policies
        if label_selected(p["podSelector"], submitter()[1])
        for t in p["policyTypes"]
    }, "the RayJob's submitter pod is not isolated"


def test_ray_pods_reach_each_other_and_dns_on_every_port():
    for name, pods in ray_pods().items():
        for src in pods:
            assert traffic_allowed(src, KUBE_DNS, 53), f"{name}: no DNS"
            for dst in pods:
                for port in RAY_INTERNAL_PORTS + (8265,):
                    assert traffic_allowed(src, dst, port), f"{name}: {src} -> {dst}:{port}"


def test_the_job_api_is_reachable_only_by_its_clients():
    job_pods = next(p for n, p in ray_pods().items() if n.startswith("RayJob"))
    job_head = job_pods[0]
    assert traffic_allowed(submitter(), job_head, 8265), "the submitter cannot submit"
    assert traffic_allowed(OPERATOR, job_head, 8265), "the KubeRay operator cannot poll the job"
    assert not traffic_allowed(submitter(), job_head, 6379), "the submitter needs only 8265"
    assert not traffic_allowed(OPERATOR, job_head, 6379)
    for name, pods in ray_pods().items():
        for pod in pods:
            for port in RAY_INTERNAL_PORTS + (8265, 10001):
                assert not traffic_allowed(BYSTANDER, pod, port), f"{name}: bystander -> {port}"
                assert not traffic_allowed(pod, BYSTANDER, port), f"{name}: -> bystander {port}"


def test_clusters_are_isolated_from_each_other():
    (a, b) = ray_pods().values()
    for src, dst in [(a[0], b[0]), (b[1], a[0]), (a[1], b[1])]:
        assert not traffic_allowed(src, dst, 6379), (src, dst)


def test_egress_outside_the_pod_network_is_https_only_and_spares_the_metadata_server():
    """ipBlock egress (object storage, HF Hub, PyPI) is the documented rule the user edits: it
    must name ports, and block the cloud metadata address (node credentials)."""
    text = (CLUSTER / "kuberay" / "networkpolicy.yaml").read_text()
    assert "EDIT" in text and "object storage" in text
    for policy in kind("NetworkPolicy"):
        for rule in policy["spec"].get("egress") or []:
            blocks = [p["ipBlock"] for p in rule.get("to", []) if "ipBlock" in p]
            if "to" not in rule or blocks:
                assert rule.get("ports"), (
                    f"{policy['metadata']['name']}: egress to any port: {rule}"
                )
            for block in blocks:
                cidr = ipaddress.ip_network(block["cidr"])
                if ipaddress.ip_address("169.254.169.254") in cidr:
                    assert any(
                        ipaddress.ip_address("169.254.169.254") in ipaddress.ip_network(e)
                        for e in block.get("except", [])
                    ), f"{policy['metadata']['name']}: {block} reaches the metadata server"
        for rule in policy["spec"].get("ingress") or []:
            assert rule.get("from"), f"{policy['metadata']['name']}: ingress from anywhere"
            assert not any("ipBlock" in p for p in rule["from"]), policy["metadata"]["name"]


# ---------------------------------------------------------------- images


def image_lines() -> list[tuple[str, str, str]]:
    """(file, image, the line above it) for every `image:` line and Dockerfile FROM in cluster/."""
    found = []
    for path in sorted(CLUSTER.rglob("*.yaml")) + [CLUSTER / "Dockerfile"]:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"^\s*(?:-\s+)?image:\s*(\S+)|^FROM\s+(\S+)", line)
            if match:
                above = lines[i - 1].strip() if i else ""
                found.append(
                    (str(path.relative_to(CLUSTER)), match.group(1) or match.group(2), above)
                )
    return found


def test_image_lines_are_all_the_images():
    assert sorted(image for _, image, _ in image_lines()) == sorted(image for _, image in images())


@pytest.mark.parametrize("source,image,above", image_lines())
def test_every_image_is_pinned_by_digest_or_marked_for_pinning(source, image, above):
    """A tag can be re-pushed; a digest cannot. Digests cannot be looked up offline, so an image
    without one must carry the exact instruction to add it."""
    assert re.search(DIGEST + "$", image) or above == PIN_COMMENT, (
        f"{source}: {image} has no @sha256 digest and no `{PIN_COMMENT}` line above it"
    )


# ---------------------------------------------------------------- shared storage


def world_writable_modes(text: str) -> list[str]:
    """chmod modes and permission settings (0777, 1777, a+w, o+w, ...) that let anyone write."""
    bad = []
    for mode in re.findall(r"\bchmod\s+(?:-\w+\s+)*([0-7]{3,4}|[ugoa]*[+=][rwxXst]+)", text):
        if mode[0].isdigit():
            if int(mode, 8) & 0o002:
                bad.append(mode)
        elif re.match(r"[ugoa]*[+=]", mode) and "w" in mode and (mode[0] in "oa+="):
            bad.append(mode)
    for key, mode in re.findall(
        r"(directoryPerms|mountPermissions|defaultMode|dirPerms|mode)\s*:\s*[\"']?(0?[0-7]{3,4})",
        text,
    ):
        if int(mode, 8) & 0o002:
            bad.append(f"{key}: {mode}")
    return bad


def test_world_writable_modes_detects_the_usual_forms():
    text = 'sudo chmod 1777 /mnt/shared; chmod -R a+w x; chmod o+w y\ndirectoryPerms: "777"'
    assert world_writable_modes(text) == ["1777", "a+w", "o+w", "directoryPerms: 777"]
    assert world_writable_modes('chmod 2770 /mnt/shared; chmod u+w z\ndirectoryPerms: "770"') == []


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CLUSTER.rglob("*") if p.is_file()),
    ids=lambda p: str(p.relative_to(CLUSTER)),
)
def test_no_mount_or_directory_is_world_writable(path):
    assert not world_writable_modes(path.read_text()), (
        f"{path}: {world_writable_modes(path.read_text())}"
    )


def test_shared_storage_is_encrypted_in_transit_and_owned_by_the_ray_user():
    classes = {c["metadata"]["name"]: c for c in kind("StorageClass")}
    (claim,) = [c for c in kind("PersistentVolumeClaim") if c["metadata"]["name"] == "orpo-shared"]
    assert claim["spec"]["storageClassName"] in classes, (
        "the PVC uses the StorageClass defined here"
    )
    for name, storage_class in classes.items():
        options = storage_class.get("mountOptions") or []
        parameters = storage_class.get("parameters") or {}
        if storage_class["provisioner"] == "efs.csi.aws.com":
            assert "tls" in options and parameters.get("encryptInTransit") != "false", name
            assert (parameters.get("uid"), parameters.get("gid")) == (str(RAY_UID), str(RAY_GID)), (
                name
            )
            assert parameters.get("directoryPerms") == "770", name
        else:
            assert any("krb5p" in o for o in options), f"{name}: NFS without sec=krb5p"
    aws_mount = " ".join(docs("aws-gpu.yaml")[0]["initialization_commands"])
    assert "mount -t efs -o tls" in aws_mount and "mount -t nfs" not in aws_mount
    for name in LAUNCHER_CONFIGS:
        commands = " ".join(docs(name)[0]["initialization_commands"])
        assert f"chown {RAY_UID}:{RAY_GID} /mnt/shared" in commands, name
        assert "chmod 2770 /mnt/shared" in commands, name


# ---------------------------------------------------------------- secrets in uploads

SECRET_PATHS = [
    ".env",
    ".env.local",
    "configs/prod.env",
    "secrets/key.pem",
    "deploy/secrets/hf.txt",
    "server.key",
    "certs/client.p12",
    "home/.ssh/id_rsa",
    "id_ed25519.pub",
    ".ssh/config",
    ".aws/credentials",
    ".kube/config",
    ".docker/config.json",
    ".config/gcloud/application_default_credentials.json",
    "gcp-service-account.json",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    "hf.token",
    ".ray/auth_token",
    "auth_token",
    ".cache/huggingface/token",
    "wandb/run-1/files/config.yaml",
    ".git/config",
    ".venv/bin/python",
]
KEPT_PATHS = [
    "pyproject.toml",
    "orpo/loss.py",
    "pipelines/train.py",
    "configs/mistral7b_orpo_ultrafeedback.yaml",
    "evaluation/judges.py",
    "tests/orpo/test_tokens.py",  # `token` only as a whole file name
    "orpo/tokenization.py",
    "cluster/runtime_env.yaml",
]


def uploaded(tmp_path: Path, paths: list[str], excludes: list[str]) -> set[str]:
    """The files Ray's own packager puts in a `--working-dir` upload of a tree with ``paths``."""
    import zipfile

    from ray._private.runtime_env.packaging import _zip_files

    root = tmp_path / "checkout"
    for relative in paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("x")
    output = tmp_path / "upload.zip"
    _zip_files(str(root), excludes, str(output), include_gitignore=False)
    with zipfile.ZipFile(output) as archive:
        return {n for n in archive.namelist() if not n.endswith("/")}


def test_runtime_env_excludes_keep_secrets_out_of_the_upload(tmp_path):
    excludes = docs("runtime_env.yaml")[0]["excludes"]
    files = uploaded(tmp_path, SECRET_PATHS + KEPT_PATHS, excludes)
    assert not files & set(SECRET_PATHS), f"uploaded: {sorted(files & set(SECRET_PATHS))}"
    assert set(KEPT_PATHS) <= files, f"excluded code: {sorted(set(KEPT_PATHS) - files)}"


def test_runtime_env_excludes_keep_every_tracked_source_file():
    """No exclude pattern drops the project's own code or configs from the upload."""
    import subprocess

    from ray._private.thirdparty.pathspec import PathSpec

    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=False
    )
    if listed.returncode or not listed.stdout:
        pytest.skip("not a git checkout")
    spec = PathSpec.from_lines("gitwildmatch", docs("runtime_env.yaml")[0]["excludes"])
    sources = [
        f
        for f in listed.stdout.splitlines()
        if f.split("/")[0] in ("orpo", "pipelines", "evaluation", "configs", "tests", "cluster")
        or f == "pyproject.toml"
    ]
    assert sources
    assert not [f for f in sources if spec.match_file(f)]
