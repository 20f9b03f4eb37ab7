"""The Databricks Asset Bundle (databricks.yml + resources/*.yml), checked by the real
Databricks CLI, plus the few checks only this repository can make.

``databricks bundle validate --strict -o json``, of the CLI version the Makefile pins and
``make setup`` builds, runs for the dev and the prod target in a copy of the bundle, against
a local stand-in of the workspace API (tests/workspace_standin.py), with a home, config
file and cache of its own and no DATABRICKS_* or BUNDLE_VAR_* variables of the machine.
The assertions are on the configuration the CLI prints, after it merged the target,
resolved the variables and applied the target's mode (what a deploy would create), and on
the calls it made to the workspace. ``--strict`` turns the CLI's warnings (unknown fields,
bad enum values, wrong types) into failures. Broken copies of the bundle show the CLI
failing with an error that names the problem.

The CLI does not know this repository, so these checks stay here: every task's entry
point is a console script of the installed wheel and loads to a callable, every
``{{job.parameters.X}}`` a task passes is a job parameter, the task graph is the one
conf/pipeline.yml's ``parents`` imply, the landing and checkpoint roots are the bundle's
Volumes, each dashboard reads the schema resource it is meant for, and every target of
databricks.yml is validated here. What the dashboards' queries compute is checked on local
Spark by tests/test_dashboards.py.

Each target is validated once per module; a validation takes under a second.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from workspace_standin import Identity, RecordedRequest, WorkspaceStandIn

from order_pipeline.cli import job_graph
from order_pipeline.common.config import load_entities

REPO_ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "order-pipeline"
CLI_OVERRIDE = "ORDER_PIPELINE_DATABRICKS_CLI"

DEVELOPER = Identity("alice.smith@example.com", "Alice Smith", ("users", "data-engineers"))
# Prod is deployed by CI, as the service principal the job runs as (its application id).
SERVICE_PRINCIPAL = Identity(
    "8b948b2e-d2b5-4b9e-8274-11b596f3b652", "order-pipeline-prod", service_principal=True
)
DEVELOPER_TOKEN = "dapi-developer"
CI_TOKEN = "dapi-ci"

# The SQL warehouses of the workspace; databricks.yml looks the dashboards' one up by name.
WAREHOUSES = {"Serverless Starter Warehouse": "4b9e8274a1d2c3f5", "Analysts": "0123456789abcdef"}

DEV = ("-t", "dev")
PROD = ("-t", "prod", "--var", f"service_principal_name={SERVICE_PRINCIPAL.user_name}")

# DESIGN.md: bronze_<entity> x4 in parallel -> silver_customers, silver_products ->
# silver_orders (needs customers) -> silver_line_items (needs orders, products) -> gold.
DESIGNED_GRAPH = {
    "bronze_customers": set(),
    "bronze_products": set(),
    "bronze_orders": set(),
    "bronze_line_items": set(),
    "silver_customers": {"bronze_customers"},
    "silver_products": {"bronze_products"},
    "silver_orders": {"bronze_orders", "silver_customers"},
    "silver_line_items": {"bronze_line_items", "silver_orders", "silver_products"},
    "gold": {"silver_line_items"},
}
DASHBOARDS = "src/dashboards"
JOB_PARAMETERS = ["catalog", "schema", "landing_root", "checkpoint_root", "full_refresh", "as_of"]


# ---------------------------------------------------------------------------------------
# The CLI and the workspace stand-in
# ---------------------------------------------------------------------------------------


def pinned_cli_version() -> str:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^DATABRICKS_CLI_VERSION\s*:?=\s*(\S+)", makefile, re.MULTILINE)
    assert match, "Makefile: DATABRICKS_CLI_VERSION is not set"
    return match.group(1)


def cli_path(version: str) -> Path:
    """Where ``make setup`` caches the CLI (the Makefile's DATABRICKS_CLI), or the override."""
    if os.environ.get(CLI_OVERRIDE):
        return Path(os.environ[CLI_OVERRIDE])
    cache_root = os.environ.get("ORDER_PIPELINE_JAR_CACHE") or Path.home() / ".cache/order-pipeline"
    return Path(cache_root) / f"databricks-cli-{version}" / "databricks"


@pytest.fixture(scope="module")
def databricks_cli() -> Path:
    version = pinned_cli_version()
    path = cli_path(version)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the Databricks CLI {version} is not at {path}: run `make setup`, which builds it "
            f"once per machine (it needs Go), or set {CLI_OVERRIDE} to a databricks {version} "
            "binary",
            pytrace=False,
        )
    reported = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert reported == f"Databricks CLI v{version}", f"{path} is not the pinned CLI"
    return path


@pytest.fixture(scope="module")
def workspace() -> Iterator[WorkspaceStandIn]:
    with WorkspaceStandIn(
        {DEVELOPER_TOKEN: DEVELOPER, CI_TOKEN: SERVICE_PRINCIPAL}, WAREHOUSES
    ) as standin:
        yield standin


@dataclass
class Validation:
    returncode: int
    stdout: str
    stderr: str
    requests: list[RecordedRequest]

    def report(self) -> str:
        calls = "\n".join(f"  {r}" for r in self.requests)
        return f"exit code {self.returncode}\nstderr:\n{self.stderr}\nrequests:\n{calls}"

    @property
    def config(self) -> dict[str, Any]:
        assert self.returncode == 0, self.report()
        return json.loads(self.stdout)

    @property
    def job(self) -> dict[str, Any]:
        jobs = self.config["resources"]["jobs"]
        # the pipeline, and the erasure job started per request (resources/erasure_job.yml)
        assert sorted(jobs) == ["erasure", "order_pipeline"]
        return jobs["order_pipeline"]

    @property
    def erasure_job(self) -> dict[str, Any]:
        return self.config["resources"]["jobs"]["erasure"]

    @property
    def task_graph(self) -> dict[str, set[str]]:
        """task_key -> the task keys it depends on."""
        return {
            t["task_key"]: {d["task_key"] for d in t.get("depends_on", [])}
            for t in self.job["tasks"]
        }


def copy_bundle(destination: Path) -> Path:
    """What `bundle validate` reads: the bundle files, the dashboards' .lvdash.json files
    and the wheel's build definition."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "databricks.yml", destination / "databricks.yml")
    shutil.copy(REPO_ROOT / "pyproject.toml", destination / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "resources", destination / "resources")
    shutil.copytree(REPO_ROOT / DASHBOARDS, destination / DASHBOARDS)
    return destination


def validate(
    cli: Path,
    bundle: Path,
    workspace: WorkspaceStandIn,
    token: str,
    args: tuple[str, ...],
    home: Path,
    strict: bool = True,
) -> Validation:
    # A fresh environment: nothing of the machine's Databricks set-up (profiles, tokens,
    # BUNDLE_VAR_*, the host-metadata cache) reaches the CLI, and it sends no telemetry.
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "DATABRICKS_HOST": workspace.url,
        "DATABRICKS_TOKEN": token,
        "DATABRICKS_CONFIG_FILE": str(home / ".databrickscfg"),
        "DATABRICKS_CACHE_DIR": str(home / "cache"),
        "DATABRICKS_CLI_DISABLE_TELEMETRY": "1",
    }
    first = len(workspace.requests)
    command = [str(cli), "bundle", "validate", "-o", "json", *args]
    if strict:
        command.append("--strict")
    done = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=120)
    return Validation(done.returncode, done.stdout, done.stderr, workspace.requests[first:])


@pytest.fixture(scope="module")
def dev(
    databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Validation:
    root = tmp_path_factory.mktemp("dev")
    return validate(
        databricks_cli, copy_bundle(root / "bundle"), workspace, DEVELOPER_TOKEN, DEV, root
    )


@pytest.fixture(scope="module")
def prod(
    databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Validation:
    root = tmp_path_factory.mktemp("prod")
    return validate(databricks_cli, copy_bundle(root / "bundle"), workspace, CI_TOKEN, PROD, root)


@pytest.fixture(params=["dev", "prod"])
def target(request: pytest.FixtureRequest) -> Validation:
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------
# What the CLI accepts and prints
# ---------------------------------------------------------------------------------------


def test_both_targets_validate_without_warnings_or_recommendations(target: Validation) -> None:
    assert target.returncode == 0, target.report()
    assert target.stderr == "", target.report()


def test_job_graph_is_the_designed_workflow(target: Validation) -> None:
    assert target.task_graph == DESIGNED_GRAPH


def test_every_task_runs_the_wheel_entry_point_of_its_layer(target: Validation) -> None:
    for task in target.job["tasks"]:
        layer = task["task_key"].split("_")[0]
        assert task["environment_key"] == "default"
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == "order_pipeline", task["task_key"]
        assert wheel_task["entry_point"] == f"order-pipeline-{layer}", task["task_key"]
        entity = task["task_key"].removeprefix(f"{layer}_")
        if layer != "gold":
            assert wheel_task["parameters"][:2] == ["--entity", entity]


def test_job_runs_one_at_a_time_queued_on_the_built_wheel(target: Validation) -> None:
    job = target.job
    assert job["max_concurrent_runs"] == 1
    assert job["queue"] == {"enabled": True}
    [environment] = job["environments"]
    assert environment["environment_key"] == "default"
    assert environment["spec"]["dependencies"] == ["./dist/*.whl"]
    artifact = target.config["artifacts"]["default"]
    assert artifact["type"] == "whl"
    assert [f["source"] for f in artifact["files"]] == [f"{artifact['path']}/dist/*.whl"]


def test_landing_and_checkpoint_roots_are_the_bundle_volumes(target: Validation) -> None:
    # The CLI leaves ${resources...} references for deploy time: resolve the Volumes' schema.
    resources = target.config["resources"]
    defaults = {p["name"]: p["default"] for p in target.job["parameters"]}
    for parameter, volume_key in (("landing_root", "landing"), ("checkpoint_root", "checkpoints")):
        volume = resources["volumes"][volume_key]
        reference = re.fullmatch(r"\$\{resources\.schemas\.(\w+)\.name\}", volume["schema_name"])
        assert reference, f"volumes.{volume_key}.schema_name: {volume['schema_name']}"
        schema = resources["schemas"][reference.group(1)]
        assert reference.group(1) == "pipeline_schema"
        assert volume["catalog_name"] == schema["catalog_name"] == defaults["catalog"]
        assert (
            defaults[parameter]
            == f"/Volumes/{defaults['catalog']}/{schema['name']}/{volume['name']}"
        )


def test_dev_is_a_paused_personal_copy_without_grants(dev: Validation) -> None:
    config, job = dev.config, dev.job
    schema = "order_pipeline_alice_smith"  # ${workspace.current_user.short_name}
    assert job["name"] == "[dev alice_smith] order-pipeline"
    assert job["schedule"]["pause_status"] == "PAUSED"
    assert job["email_notifications"]["on_failure"] == [DEVELOPER.user_name]
    assert {p["name"]: p["default"] for p in job["parameters"]} == {
        "catalog": "main",
        "schema": schema,
        "landing_root": f"/Volumes/main/{schema}/landing",
        "checkpoint_root": f"/Volumes/main/{schema}/checkpoints",
        "full_refresh": "false",
        "as_of": "",
    }
    schemas = config["resources"]["schemas"]
    assert {key: (s["catalog_name"], s["name"]) for key, s in schemas.items()} == {
        "pipeline_schema": ("main", schema),
        "quarantine_schema": ("main", f"{schema}_quarantine"),
    }
    # The developer who deploys dev owns its schemas and Volumes and needs no grants; a
    # grants list would be the bundle's, and a redeploy may revoke what it does not name.
    for kind in ("schemas", "volumes"):
        for key, resource in config["resources"][kind].items():
            assert "grants" not in resource, f"dev {kind}.{key} has grants"
    assert "run_as" not in config and "permissions" not in config


def test_prod_runs_unpaused_as_the_service_principal(prod: Validation) -> None:
    config, job = prod.config, prod.job
    sp = SERVICE_PRINCIPAL.user_name
    assert job["name"] == "order-pipeline"
    assert job["schedule"]["pause_status"] == "UNPAUSED"
    assert config["run_as"] == {"service_principal_name": sp}
    assert job["run_as"] == {"service_principal_name": sp}
    assert config["permissions"] == [
        {"level": "CAN_MANAGE", "service_principal_name": sp},
        {"group_name": "users", "level": "CAN_VIEW"},
    ]
    assert config["workspace"]["root_path"] == (
        f"/Workspace/Users/{sp}/.bundle/order-pipeline/prod"
    )
    assert {p["name"]: p["default"] for p in job["parameters"]} == {
        "catalog": "main",
        "schema": "order_pipeline",
        "landing_root": "/Volumes/main/order_pipeline/landing",
        "checkpoint_root": "/Volumes/main/order_pipeline/checkpoints",
        "full_refresh": "false",
        "as_of": "",
    }


def test_prod_grants_the_job_operators_and_data_stewards_what_each_needs(
    prod: Validation,
) -> None:
    resources = prod.config["resources"]
    sp = SERVICE_PRINCIPAL.user_name
    job_writes_tables = ["USE_SCHEMA", "CREATE_TABLE", "SELECT", "MODIFY"]
    grants = {
        f"{kind}.{key}": resource.get("grants")
        for kind in ("schemas", "volumes")
        for key, resource in resources[kind].items()
    }
    assert grants == {
        "schemas.pipeline_schema": [
            {"principal": sp, "privileges": job_writes_tables},
            {"principal": "users", "privileges": ["USE_SCHEMA", "SELECT"]},
        ],
        # Raw records with e-mails and phone numbers: the operators get nothing here.
        "schemas.quarantine_schema": [
            {"principal": sp, "privileges": job_writes_tables},
            {"principal": "data-stewards", "privileges": ["USE_SCHEMA", "SELECT", "MODIFY"]},
        ],
        "volumes.landing": [{"principal": sp, "privileges": ["READ_VOLUME", "WRITE_VOLUME"]}],
        "volumes.checkpoints": [{"principal": sp, "privileges": ["READ_VOLUME", "WRITE_VOLUME"]}],
    }
    assert resources["schemas"]["quarantine_schema"]["name"] == "order_pipeline_quarantine"


def test_prod_schemas_and_volumes_cannot_be_destroyed(prod: Validation) -> None:
    resources = prod.config["resources"]
    protected = {
        f"{kind}.{key}"
        for kind in ("schemas", "volumes")
        for key, resource in resources[kind].items()
        if resource.get("lifecycle", {}).get("prevent_destroy") is True
    }
    assert protected == {
        "schemas.pipeline_schema",
        "schemas.quarantine_schema",
        "volumes.landing",
        "volumes.checkpoints",
    }


def _schema_reference(resources: dict[str, Any], reference: str) -> tuple[str, dict[str, Any]]:
    """The schema resource a ``${resources.schemas.KEY.name}`` reference names (the CLI
    leaves such references for deploy time)."""
    match = re.fullmatch(r"\$\{resources\.schemas\.(\w+)\.name\}", reference)
    assert match, f"not a schema reference: {reference}"
    return match.group(1), resources["schemas"][match.group(1)]


def test_dashboards_read_their_schema_on_the_looked_up_warehouse(target: Validation) -> None:
    config = target.config
    resources = config["resources"]
    catalog = {p["name"]: p["default"] for p in target.job["parameters"]}["catalog"]
    expected_schema = {
        "pipeline_health": "pipeline_schema",
        "quarantine_review": "quarantine_schema",
    }
    assert set(resources["dashboards"]) == set(expected_schema)
    for key, dashboard in resources["dashboards"].items():
        assert dashboard["warehouse_id"] == WAREHOUSES["Serverless Starter Warehouse"], key
        # each viewer's own grants decide what the queries may read
        assert dashboard["embed_credentials"] is False, key
        assert dashboard["dataset_catalog"] == catalog, key
        schema_key, schema = _schema_reference(resources, dashboard["dataset_schema"])
        assert schema_key == expected_schema[key]
        assert schema["catalog_name"] == catalog
        assert dashboard["file_path"] == f"{DASHBOARDS}/{key}.lvdash.json"
        # the CLI read the file in: what a deploy sends is the file as it is in the repository
        source = (REPO_ROOT / dashboard["file_path"]).read_text(encoding="utf-8")
        assert dashboard["serialized_dashboard"] == source, key
        assert dashboard["parent_path"] == f"{config['workspace']['root_path']}/resources"


def test_dev_dashboards_and_alerts_are_personal_and_paused(dev: Validation) -> None:
    resources = dev.config["resources"]
    prefix = "[dev alice_smith] "
    assert {k: d["display_name"] for k, d in resources["dashboards"].items()} == {
        "pipeline_health": f"{prefix}order-pipeline health",
        "quarantine_review": f"{prefix}order-pipeline quarantine",
    }
    for key, alert in resources["alerts"].items():
        assert alert["display_name"].startswith(prefix), key
        assert alert["schedule"]["pause_status"] == "PAUSED", key
        assert "run_as" not in alert and "permissions" not in alert, key
    assert "schemas.quarantine_schema" not in str(resources["dashboards"]["pipeline_health"])
    for dashboard in resources["dashboards"].values():
        assert "permissions" not in dashboard


def test_alerts_watch_the_targets_ops_tables_and_mail_the_on_call(target: Validation) -> None:
    config = target.config
    alerts = config["resources"]["alerts"]
    defaults = {p["name"]: p["default"] for p in target.job["parameters"]}
    tables = f"{defaults['catalog']}.{defaults['schema']}"
    mail = target.job["email_notifications"]["on_failure"][0]
    assert set(alerts) == {"pipeline_freshness", "quarantine_ratio"}
    expected = {
        # key: (table read, column compared, threshold, state when the query returns nothing)
        "pipeline_freshness": ("ops_task_runs", "hours_since_success", 3, "TRIGGERED"),
        "quarantine_ratio": ("ops_quality_metrics", "quarantine_ratio", 0.05, "OK"),
    }
    for key, alert in alerts.items():
        table, column, threshold, when_empty = expected[key]
        assert f"FROM {tables}.{table}\n" in alert["query_text"], key
        assert alert["warehouse_id"] == WAREHOUSES["Serverless Starter Warehouse"], key
        evaluation = alert["evaluation"]
        assert evaluation["source"]["name"] == column, key
        assert evaluation["source"]["aggregation"] == "MAX", key
        assert evaluation["comparison_operator"] == "GREATER_THAN", key
        assert evaluation["threshold"] == {"value": {"double_value": threshold}}, key
        assert evaluation["empty_result_state"] == when_empty, key
        assert evaluation["notification"]["subscriptions"] == [{"user_email": mail}], key
        assert alert["schedule"]["timezone_id"] == "UTC", key
        assert alert["schedule"]["pause_status"] == target.job["schedule"]["pause_status"], key


def test_prod_alerts_run_as_the_service_principal_and_stewards_run_their_dashboard(
    prod: Validation,
) -> None:
    resources = prod.config["resources"]
    sp = SERVICE_PRINCIPAL.user_name
    for key, alert in resources["alerts"].items():
        assert alert["run_as"] == {"service_principal_name": sp}, key
        assert alert["display_name"].startswith("order-pipeline "), key
    bundle_wide = [
        {"level": "CAN_MANAGE", "service_principal_name": sp},
        {"group_name": "users", "level": "CAN_READ"},  # CAN_VIEW, as a dashboard calls it
    ]
    dashboards = resources["dashboards"]
    assert dashboards["pipeline_health"]["permissions"] == bundle_wide
    assert dashboards["quarantine_review"]["permissions"] == [
        {"group_name": "data-stewards", "level": "CAN_RUN"},
        *bundle_wide,
    ]
    assert {d["display_name"] for d in dashboards.values()} == {
        "order-pipeline health",
        "order-pipeline quarantine",
    }


def test_a_warehouse_id_given_on_the_command_line_skips_the_lookup(
    databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "bundle")
    args = (*DEV, "--var", "warehouse_id=feedc0ffee123456")
    result = validate(databricks_cli, bundle, workspace, DEVELOPER_TOKEN, args, tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.report()
    assert ("GET", "/api/2.0/sql/warehouses") not in _calls(result)
    resources = result.config["resources"]
    for kind in ("dashboards", "alerts"):
        for key, resource in resources[kind].items():
            assert resource["warehouse_id"] == "feedc0ffee123456", f"{kind}.{key}"
    assert workspace.unknown_requests == []


def test_another_warehouse_is_looked_up_by_its_name(
    databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "bundle")
    args = (*DEV, "--var", "warehouse_name=Analysts")
    result = validate(databricks_cli, bundle, workspace, DEVELOPER_TOKEN, args, tmp_path)
    assert result.returncode == 0, result.report()
    assert {d["warehouse_id"] for d in result.config["resources"]["dashboards"].values()} == {
        WAREHOUSES["Analysts"]
    }
    assert workspace.unknown_requests == []


# ---------------------------------------------------------------------------------------
# What the CLI asked the workspace
# ---------------------------------------------------------------------------------------


def _calls(validation: Validation) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in validation.requests]


def test_dev_asks_who_deploys_and_creates_the_bundle_folder(
    dev: Validation, workspace: WorkspaceStandIn
) -> None:
    files = f"/Workspace/Users/{DEVELOPER.user_name}/.bundle/order-pipeline/dev/files"
    assert [str(r) for r in dev.requests] == [
        "GET /.well-known/databricks-config",
        "GET /api/2.0/preview/scim/v2/Me",
        "GET /api/2.0/sql/warehouses",  # variables.warehouse_id's lookup
        f"GET /api/2.0/workspace/get-status?path={files}",
        f'POST /api/2.0/workspace/mkdirs {{"path":"{files}"}}',
        f"GET /api/2.0/workspace/get-status?path={files}",
    ], dev.report()
    assert {r.caller for r in dev.requests[1:]} == {DEVELOPER.user_name}
    assert files.removeprefix("/Workspace") in workspace.folders()
    assert workspace.unknown_requests == []


def test_prod_checks_the_bundle_folder_permissions_as_the_service_principal(
    prod: Validation, workspace: WorkspaceStandIn
) -> None:
    root = prod.config["workspace"]["root_path"]
    calls = _calls(prod)
    assert calls[:3] == [
        ("GET", "/.well-known/databricks-config"),
        ("GET", "/api/2.0/preview/scim/v2/Me"),
        ("GET", "/api/2.0/sql/warehouses"),
    ], prod.report()
    assert {r.caller for r in prod.requests[1:]} == {SERVICE_PRINCIPAL.user_name}
    assert ("POST", "/api/2.0/workspace/mkdirs") in calls
    # The CLI compares the ACL of the closest existing folder of the bundle root (looked
    # up with get-status, walking up) with the bundle's `permissions` (no warning: the
    # service principal owns it and the bundle lists it as CAN_MANAGE).
    prefix = "/api/2.0/permissions/directories/"
    [checked] = [path.removeprefix(prefix) for _, path in calls if path.startswith(prefix)]
    folder = workspace.path_of(checked)
    assert folder is not None and (root.removeprefix("/Workspace") + "/").startswith(
        folder + "/"
    ), prod.report()
    looked_up = {r.query["path"][0] for r in prod.requests if r.path.endswith("/get-status")}
    assert f"{root}/files" in looked_up and root in looked_up
    assert workspace.unknown_requests == []


# ---------------------------------------------------------------------------------------
# Prod, deployed the wrong way
# ---------------------------------------------------------------------------------------


def test_prod_deployed_by_a_person_is_a_recommendation_not_an_error(
    databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path: Path
) -> None:
    # The CLI recommends that `permissions` name the deploying identity; CI deploys as the
    # service principal, which they do. A person validating prod is told so, without failing.
    bundle = copy_bundle(tmp_path / "bundle")
    result = validate(
        databricks_cli, bundle, workspace, DEVELOPER_TOKEN, PROD, tmp_path, strict=False
    )
    assert result.returncode == 0, result.report()
    assert (
        "Recommendation: permissions section should explicitly include the current "
        f"deployment identity '{DEVELOPER.user_name}'"
    ) in result.stderr
    assert "Error:" not in result.stderr


def test_prod_without_a_service_principal_fails_naming_run_as(
    databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path: Path
) -> None:
    bundle = copy_bundle(tmp_path / "bundle")
    result = validate(databricks_cli, bundle, workspace, CI_TOKEN, ("-t", "prod"), tmp_path)
    assert result.returncode != 0
    assert "run_as section must specify exactly one identity" in result.stderr, result.report()


# ---------------------------------------------------------------------------------------
# Broken bundles: the CLI fails and names the problem
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Breakage:
    file: str
    old: str  # replaced once
    new: str
    words: tuple[str, ...]  # the CLI's error names all of them
    args: tuple[str, ...] = DEV
    token: str = DEVELOPER_TOKEN


BROKEN_BUNDLES = {
    "unknown task field": Breakage(
        "resources/jobs.yml",
        "        - task_key: bronze_orders\n",
        "        - task_key: bronze_orders\n          max_retrys: 2\n",
        (
            "unknown field: max_retrys",
            "resources.jobs.order_pipeline.tasks[2]",
            "resources/jobs.yml",
        ),
    ),
    "resource key shared by a job and a schema": Breakage(
        "resources/schema.yml",
        "    quarantine_schema:\n",
        "    order_pipeline:\n",
        (
            "multiple resources or scripts have been defined with the same key: order_pipeline",
            "resources/schema.yml",
        ),
    ),
    "undefined variable": Breakage(
        "resources/jobs.yml",
        "default: ${var.catalog}",
        "default: ${var.catalgo}",
        ("reference does not exist: ${var.catalgo}",),
    ),
    "variable without a value": Breakage(
        "databricks.yml",
        "    description: Unity Catalog catalog holding the pipeline's schema.\n    default: main\n",
        "    description: Unity Catalog catalog holding the pipeline's schema.\n",
        ("no value assigned to required variable catalog",),
    ),
    "bad enum value": Breakage(
        "resources/schema.yml",
        "volume_type: MANAGED",
        "volume_type: MANAGD",
        ('invalid value "MANAGD" for enum field', "resources.volumes.landing.volume_type"),
    ),
    "unknown privilege in a prod grant": Breakage(
        "databricks.yml",
        "privileges: [USE_SCHEMA, SELECT, MODIFY]",
        "privileges: [USE_SCHEMA, SELEKT, MODIFY]",
        (
            'invalid value "SELEKT" for enum field',
            "resources.schemas.quarantine_schema.grants[1].privileges[1]",
        ),
        args=PROD,
        token=CI_TOKEN,
    ),
    "wrong type": Breakage(
        "resources/jobs.yml",
        "max_concurrent_runs: 1",
        "max_concurrent_runs: one",
        ('cannot parse "one" as an integer', "resources.jobs.order_pipeline.max_concurrent_runs"),
    ),
    "warehouse that the workspace does not have": Breakage(
        "databricks.yml",
        "default: Serverless Starter Warehouse",
        "default: Serverless Starter Warehous",
        ("failed to resolve warehouse: Serverless Starter Warehous",),
    ),
    "unknown dashboard field": Breakage(
        "resources/dashboards.yml",
        "      dataset_schema: ${resources.schemas.pipeline_schema.name}\n",
        "      dataset_schemas: ${resources.schemas.pipeline_schema.name}\n",
        ("unknown field: dataset_schemas", "resources.dashboards.pipeline_health"),
    ),
    "dashboard file that is not there": Breakage(
        "resources/dashboards.yml",
        "file_path: ../src/dashboards/pipeline_health.lvdash.json",
        "file_path: ../src/dashboards/pipeline_heath.lvdash.json",
        ("pipeline_heath.lvdash.json",),
    ),
    "bad alert comparison operator": Breakage(
        "resources/alerts.yml",
        "comparison_operator: GREATER_THAN\n",
        "comparison_operator: ABOVE\n",
        (
            'invalid value "ABOVE" for enum field',
            "resources.alerts.pipeline_freshness.evaluation.comparison_operator",
        ),
    ),
    "bad target mode": Breakage(
        "databricks.yml",
        "mode: production",
        "mode: prod",
        ("unsupported value 'prod' specified for 'mode'",),
        args=PROD,
        token=CI_TOKEN,
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_BUNDLES))
def test_a_broken_bundle_fails_validation_naming_the_problem(
    case: str, databricks_cli: Path, workspace: WorkspaceStandIn, tmp_path: Path
) -> None:
    breakage = BROKEN_BUNDLES[case]
    bundle = copy_bundle(tmp_path / "bundle")
    path = bundle / breakage.file
    text = path.read_text(encoding="utf-8")
    assert breakage.old in text, f"{breakage.file} no longer contains {breakage.old!r}"
    path.write_text(text.replace(breakage.old, breakage.new, 1), encoding="utf-8")

    result = validate(databricks_cli, bundle, workspace, breakage.token, breakage.args, tmp_path)

    assert result.returncode != 0, result.report()
    missing = [word for word in breakage.words if word not in result.stderr]
    assert not missing, f"the CLI's error does not name {missing}:\n{result.report()}"


# ---------------------------------------------------------------------------------------
# What only this repository knows
# ---------------------------------------------------------------------------------------


def test_every_target_is_validated_here() -> None:
    # The CLI checks a target only when asked to: a new target needs its validation above.
    bundle = yaml.safe_load((REPO_ROOT / "databricks.yml").read_text(encoding="utf-8"))
    assert set(bundle["targets"]) == {"dev", "prod"}


def test_task_entry_points_are_console_scripts_of_the_wheel(dev: Validation) -> None:
    distribution = importlib.metadata.distribution(DISTRIBUTION)
    scripts = {ep.name: ep for ep in distribution.entry_points.select(group="console_scripts")}
    for task in dev.job["tasks"]:
        wheel_task = task["python_wheel_task"]
        name = distribution.metadata["Name"].replace("-", "_")
        assert wheel_task["package_name"] == name, task["task_key"]
        entry_point = scripts.get(wheel_task["entry_point"])
        assert entry_point is not None, (
            f"{task['task_key']}: entry_point {wheel_task['entry_point']!r} is not a console "
            f"script of {DISTRIBUTION} (has: {', '.join(sorted(scripts))})"
        )
        assert callable(entry_point.load()), f"{entry_point.value} is not callable"


def test_tasks_pass_only_declared_job_parameters(dev: Validation) -> None:
    declared = [p["name"] for p in dev.job["parameters"]]
    assert declared == JOB_PARAMETERS
    for task in dev.job["tasks"]:
        for argument in task["python_wheel_task"]["parameters"]:
            for name in re.findall(r"\{\{\s*job\.parameters\.([^}\s]+)\s*\}\}", argument):
                assert name in declared, f"{task['task_key']}: {{{{job.parameters.{name}}}}}"


def test_task_graph_follows_the_entity_parents_of_conf_pipeline(dev: Validation) -> None:
    # as the CLI reads the bundle: the graph conf/pipeline.yml's parents generate
    generated = {
        task["task_key"]: {d["task_key"] for d in task.get("depends_on", [])}
        for task in job_graph.job_tasks(load_entities())
    }
    assert dev.task_graph == generated


def test_the_job_tasks_are_the_ones_conf_pipeline_generates() -> None:
    difference = job_graph.difference(REPO_ROOT / "resources" / "jobs.yml", load_entities())
    assert not difference, (
        "resources/jobs.yml's tasks differ from conf/pipeline.yml; run "
        f"`order-pipeline job-graph --write` to apply:\n{difference}"
    )


def test_the_erasure_job_runs_the_pipeline_then_erases_one_customer(target: Validation) -> None:
    job = target.erasure_job
    assert job["max_concurrent_runs"] == 1 and "schedule" not in job
    defaults = {p["name"]: p["default"] for p in job["parameters"]}
    assert defaults["customer_id"] == "" and defaults["reason"] == ""
    pipeline = {p["name"]: p["default"] for p in target.job["parameters"]}
    for name in ("catalog", "schema", "landing_root", "checkpoint_root"):
        assert defaults[name] == pipeline[name], name
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert sorted(tasks) == ["erase_customer", "run_pipeline"]
    run_pipeline, erase = tasks["run_pipeline"], tasks["erase_customer"]
    # the pipeline job's own run (queued behind a running one) lets every stream catch up
    assert run_pipeline["run_job_task"]["job_id"] == "${resources.jobs.order_pipeline.id}"
    assert set(run_pipeline["run_job_task"]["job_parameters"]) <= set(pipeline)
    assert erase["depends_on"] == [{"task_key": "run_pipeline"}]
    wheel_task = erase["python_wheel_task"]
    assert wheel_task["entry_point"] == "order-pipeline-erase"
    arguments = wheel_task["parameters"]
    assert arguments[:6] == [
        "--entity", "customers", "--key", "{{job.parameters.customer_id}}",
        "--reason", "{{job.parameters.reason}}",
    ]  # fmt: skip
    for argument in arguments:
        for name in re.findall(r"\{\{\s*job\.parameters\.([^}\s]+)\s*\}\}", argument):
            assert name in defaults, f"{{{{job.parameters.{name}}}}}"
    if target.config["bundle"]["target"] == "prod":
        assert job["run_as"] == {"service_principal_name": SERVICE_PRINCIPAL.user_name}


def test_the_erase_entry_point_is_a_console_script_of_the_wheel(
    dev: Validation,
) -> None:
    from order_pipeline.jobs import erase

    distribution = importlib.metadata.distribution(DISTRIBUTION)
    scripts = {ep.name: ep for ep in distribution.entry_points.select(group="console_scripts")}
    (erase_task,) = [t for t in dev.erasure_job["tasks"] if "python_wheel_task" in t]
    wheel_task = erase_task["python_wheel_task"]
    assert scripts[wheel_task["entry_point"]].load() is erase.main
