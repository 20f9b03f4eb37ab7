"""Offline validation of the Databricks Asset Bundle: databricks.yml + resources/*.yml.

No network and no Databricks CLI. Two sources of truth from Databricks itself:

* resources (jobs, schemas, volumes, ...) are checked field by field against the typed
  models of the ``databricks-bundles`` package (generated from the same specification as
  the CLI's bundle schema), then parsed with the models' own ``from_dict``;
* the rest of the configuration (bundle, variables, targets, artifacts, presets, ...) is
  checked with jsonschema against ``BUNDLE_CONFIG_SCHEMA`` below, transcribed from the
  CLI's ``bundle/schema/jsonschema.json`` (databricks/cli), which no installed package
  ships.

On top of that, cross-references the CLI only resolves at deploy time: ``${var.X}`` and
``${resources.T.K...}`` references, ``{{job.parameters.X}}`` and other dynamic value
references, task dependencies (existing, acyclic), environment keys, and the
python_wheel_task entry points against the installed distribution's metadata.

``check_bundle(root)`` returns every problem as "<file>: <dotted.key>: <what is wrong>".
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import importlib.metadata
import importlib.util
import re
import shutil
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from databricks.bundles.core import Variable
from databricks.bundles.core._resource_type import _ResourceType
from databricks.bundles.jobs import JobRunAs

REPO_ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "order-pipeline"

# ---------------------------------------------------------------------------------------
# The non-resource part of the bundle schema, transcribed from databricks/cli
# bundle/schema/jsonschema.json (config.Root, config.Bundle, config.Target, config.Artifact,
# config.Workspace, config.Presets, config.Experimental, config.Sync, variable.Variable,
# variable.Lookup, resources.Permission). Resources are validated with databricks-bundles.
# ---------------------------------------------------------------------------------------

_REF = {"type": "string", "pattern": r"^\$\{[^{}]+\}$"}
_STR = {"type": "string"}
_BOOL = {"anyOf": [{"type": "boolean"}, _REF]}
_INT = {"anyOf": [{"type": "integer"}, _REF]}
_STR_LIST = {"type": "array", "items": _STR}
_STR_MAP = {"type": "object", "additionalProperties": _STR}


def _obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_GIT = _obj({"branch": _STR, "origin_url": _STR})
_SYNC = _obj({"exclude": _STR_LIST, "include": _STR_LIST, "paths": _STR_LIST})
_BUNDLE = _obj(
    {
        "cluster_id": _STR,
        "compute_id": _STR,
        "databricks_cli_version": _STR,
        "deployment": _obj(
            {
                "fail_on_active_runs": _BOOL,
                "lock": _obj({"enabled": _BOOL, "force": _BOOL}),
            }
        ),
        "git": _GIT,
        "name": _STR,
        "uuid": _STR,
    },
    required=("name",),
)
_ARTIFACT = _obj(
    {
        "build": _STR,
        "dynamic_version": _BOOL,
        "executable": {"enum": ["bash", "sh", "cmd"]},
        "files": {"type": "array", "items": _obj({"source": _STR}, required=("source",))},
        "path": _STR,
        "type": {"enum": ["whl", "jar"]},
    }
)
_WORKSPACE = _obj(
    {
        key: (_BOOL if key == "azure_use_msi" else _STR)
        for key in [
            "artifact_path",
            "auth_type",
            "azure_client_id",
            "azure_environment",
            "azure_login_app_id",
            "azure_tenant_id",
            "azure_use_msi",
            "azure_workspace_resource_id",
            "client_id",
            "file_path",
            "google_service_account",
            "host",
            "profile",
            "resource_path",
            "root_path",
            "state_path",
        ]
    }
)
_PRESETS = _obj(
    {
        "artifacts_dynamic_version": _BOOL,
        "jobs_max_concurrent_runs": _INT,
        "name_prefix": _STR,
        "pipelines_development": _BOOL,
        "source_linked_deployment": _BOOL,
        "tags": _STR_MAP,
        "trigger_pause_status": {"anyOf": [{"enum": ["PAUSED", "UNPAUSED"]}, _REF]},
    }
)
_PYTHON = _obj({"mutators": _STR_LIST, "resources": _STR_LIST, "venv_path": _STR})
_EXPERIMENTAL = _obj(
    {
        "python": _PYTHON,
        "python_wheel_wrapper": _BOOL,
        "scripts": _STR_MAP,
        "skip_artifact_cleanup": _BOOL,
        "skip_name_prefix_for_schema": _BOOL,
        "use_legacy_run_as": _BOOL,
    }
)
_PERMISSION = {
    **_obj(
        {
            "level": {"enum": ["CAN_MANAGE", "CAN_VIEW", "CAN_RUN"]},
            "user_name": _STR,
            "group_name": _STR,
            "service_principal_name": _STR,
        },
        required=("level",),
    ),
    "oneOf": [
        {"required": ["user_name"]},
        {"required": ["group_name"]},
        {"required": ["service_principal_name"]},
    ],
}
_LOOKUP = _obj(
    {
        key: _STR
        for key in [
            "alert",
            "cluster",
            "cluster_policy",
            "dashboard",
            "instance_pool",
            "job",
            "metastore",
            "notification_destination",
            "pipeline",
            "query",
            "service_principal",
            "warehouse",
        ]
    }
)
# "The only valid value for the type setting is complex" (bundle variables docs).
_VARIABLE = _obj(
    {"default": {}, "description": _STR, "lookup": _LOOKUP, "type": {"enum": ["complex"]}}
)
_RESOURCE_TYPES = sorted(rt.plural_name for rt in _ResourceType.all())
_RESOURCES = {
    "type": "object",
    "propertyNames": {"enum": _RESOURCE_TYPES},
    "additionalProperties": {"type": "object", "additionalProperties": {"type": "object"}},
}
# run_as is a jobs.JobRunAs, checked with the databricks-bundles model.
_RUN_AS = {"type": "object"}
_TARGET = _obj(
    {
        "artifacts": {"type": "object", "additionalProperties": _ARTIFACT},
        "bundle": {**_BUNDLE, "required": []},
        "cluster_id": _STR,
        "compute_id": _STR,
        "default": _BOOL,
        "git": _GIT,
        "mode": {"enum": ["development", "production"]},
        "permissions": {"type": "array", "items": _PERMISSION},
        "presets": _PRESETS,
        "resources": _RESOURCES,
        "run_as": _RUN_AS,
        "sync": _SYNC,
        # Target variables are either the full form or a bare value (anyOf [..., {}]).
        "variables": {"type": "object"},
        "workspace": _WORKSPACE,
    }
)
BUNDLE_CONFIG_SCHEMA: dict[str, Any] = _obj(
    {
        "artifacts": {"type": "object", "additionalProperties": _ARTIFACT},
        "bundle": _BUNDLE,
        "experimental": _EXPERIMENTAL,
        "include": _STR_LIST,
        "permissions": {"type": "array", "items": _PERMISSION},
        "presets": _PRESETS,
        "python": _PYTHON,
        "resources": _RESOURCES,
        "run_as": _RUN_AS,
        "scripts": {"type": "object"},
        "sync": _SYNC,
        "targets": {"type": "object", "additionalProperties": _TARGET},
        "variables": {"type": "object", "additionalProperties": _VARIABLE},
        "workspace": _WORKSPACE,
    }
)

# Model class per resource type ("jobs" -> databricks.bundles.jobs.Job, ...). The registry is
# internal to databricks-bundles, but it is the generated list of every resource type the
# package (and the CLI of the same version) knows.
RESOURCE_MODELS: dict[str, type] = {rt.plural_name: rt.resource_type for rt in _ResourceType.all()}

# ${a.b[0].c}: the CLI's reference syntax (libs/dyn/dynvar).
_REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*)\}")
_FULL_REFERENCE = re.compile(r"^\$\{[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*\}$")
_REFERENCE_NAMESPACES = {"var", "resources", "bundle", "workspace", "artifacts", "variables"}
# {{job.parameters.x}}: Databricks Jobs dynamic value references.
_DYNAMIC_REFERENCE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_DYNAMIC_FIELDS = {
    "job": {"id", "name", "run_id", "repair_count", "start_time", "trigger", "parameters"},
    "task": {"name", "run_id", "notebook_path", "execution_count"},
    "workspace": {"id", "url"},
}
_TRUE_FALSE = {"true", "false", "True", "False", "TRUE", "FALSE"}


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


@dataclass
class Bundle:
    """databricks.yml and its included files, plus the merged view the CLI would build."""

    root: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    resource_files: dict[tuple[str, str], str] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> dict[str, Any]:
        return self.resources.get("jobs", {})


def load_bundle(root: Path) -> Bundle:
    bundle = Bundle(root=root)
    main = root / "databricks.yml"
    main_data = _read_yaml(main, "databricks.yml", bundle)
    if main_data is None:
        return bundle
    bundle.files["databricks.yml"] = main_data
    for pattern in main_data.get("include") or []:
        matches = sorted(root.glob(pattern))
        if not matches:
            bundle.problems.append(f"databricks.yml: include: {pattern!r} matches no file")
        for path in matches:
            label = path.relative_to(root).as_posix()
            data = _read_yaml(path, label, bundle)
            if data is not None:
                bundle.files[label] = data
    for label, data in bundle.files.items():
        _merge_file(bundle, label, data)
    return bundle


def _read_yaml(path: Path, label: str, bundle: Bundle) -> dict[str, Any] | None:
    if not path.is_file():
        bundle.problems.append(f"{label}: <file>: not found")
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        bundle.problems.append(f"{label}: <file>: not valid YAML: {exc}")
        return None
    if not isinstance(data, dict):
        bundle.problems.append(f"{label}: <file>: expected a mapping at the top level")
        return None
    return data


def _merge_file(bundle: Bundle, label: str, data: dict[str, Any]) -> None:
    """Merge one file's sections into the bundle; a name defined twice is a problem."""
    for rtype, items in _mapping(data.get("resources")).items():
        for key, spec in _mapping(items).items():
            if (rtype, key) in bundle.resource_files:
                first = bundle.resource_files[(rtype, key)]
                bundle.problems.append(
                    f"{label}: resources.{rtype}.{key}: already defined in {first}"
                )
                continue
            bundle.resources.setdefault(rtype, {})[key] = spec
            bundle.resource_files[(rtype, key)] = label
    for section in ("variables", "targets", "artifacts"):
        merged: dict[str, Any] = getattr(bundle, section)
        for name, value in _mapping(data.get(section)).items():
            if name in merged:
                bundle.problems.append(f"{label}: {section}.{name}: defined in two files")
            merged[name] = value


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def check_bundle(
    root: Path, *, distribution: str = DISTRIBUTION, load_entry_points: bool = False
) -> list[str]:
    """Every problem found in the bundle at ``root``, as "<file>: <key>: <problem>"."""
    bundle = load_bundle(root)
    problems = list(bundle.problems)
    for check in (
        _check_config_schema,
        _check_resource_models,
        _check_target_overrides,
        _check_references,
        _check_variables,
        _check_artifacts,
    ):
        problems += check(bundle)
    problems += _check_jobs(bundle, distribution, load_entry_points)
    return problems


def _check_config_schema(bundle: Bundle) -> list[str]:
    validator = jsonschema.Draft202012Validator(BUNDLE_CONFIG_SCHEMA)
    problems = []
    for label, data in bundle.files.items():
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            problems.append(f"{label}: {_dotted(error.absolute_path) or '<top>'}: {error.message}")
    for label, data in bundle.files.items():
        run_as_places = [("run_as", data.get("run_as"))] + [
            (f"targets.{name}.run_as", _mapping(target).get("run_as"))
            for name, target in _mapping(data.get("targets")).items()
        ]
        for key, run_as in run_as_places:
            if run_as is not None:
                problems += _check_model(JobRunAs, run_as, key, label)
    return problems


def _check_resource_models(bundle: Bundle) -> list[str]:
    problems = []
    for (rtype, key), label in bundle.resource_files.items():
        model = RESOURCE_MODELS.get(rtype)
        if model is not None:
            spec = bundle.resources[rtype][key]
            problems += _check_model(model, spec, f"resources.{rtype}.{key}", label)
    return problems


def _check_target_overrides(bundle: Bundle) -> list[str]:
    """A target's resources are merged over the top-level ones; the result must be valid."""
    problems = []
    for target_name, target in bundle.targets.items():
        label = _file_defining(bundle, "targets", target_name)
        for rtype, items in _mapping(_mapping(target).get("resources")).items():
            for key, override in _mapping(items).items():
                path = f"targets.{target_name}.resources.{rtype}.{key}"
                base = bundle.resources.get(rtype, {}).get(key)
                if base is None:
                    problems.append(f"{label}: {path}: overrides an undefined resource")
                    continue
                model = RESOURCE_MODELS.get(rtype)
                if model is not None:
                    merged = _deep_merge(base, override)
                    problems += _check_model(model, merged, path, label)
        declared = set(bundle.variables)
        for name in _mapping(_mapping(target).get("variables")).keys() - declared:
            problems.append(
                f"{label}: targets.{target_name}.variables.{name}: variable is not declared "
                f"under variables (declared: {', '.join(sorted(declared))})"
            )
    defaults = [name for name, t in bundle.targets.items() if _mapping(t).get("default") is True]
    if len(defaults) != 1:
        problems.append(
            f"databricks.yml: targets: exactly one target needs default: true, got {defaults}"
        )
    return problems


def _check_references(bundle: Bundle) -> list[str]:
    problems = []
    for label, data in bundle.files.items():
        for path, text in _strings(data):
            for ref in _REFERENCE.findall(text):
                problem = _reference_problem(bundle, ref)
                if problem:
                    problems.append(f"{label}: {path}: {problem}")
    return problems


def _reference_problem(bundle: Bundle, ref: str) -> str | None:
    parts = re.split(r"\.|\[", ref)
    namespace = parts[0]
    if namespace not in _REFERENCE_NAMESPACES:
        return f"${{{ref}}}: unknown namespace {namespace!r} (expected one of {sorted(_REFERENCE_NAMESPACES)})"
    if namespace in {"var", "variables"} and parts[1] not in bundle.variables:
        return f"${{{ref}}}: variable {parts[1]!r} is not declared under variables"
    if namespace == "resources":
        if len(parts) < 4:
            return f"${{{ref}}}: expected ${{resources.<type>.<name>.<field>}}"
        if parts[2] not in bundle.resources.get(parts[1], {}):
            return f"${{{ref}}}: no resource {parts[1]}.{parts[2]} in the bundle"
    return None


def _check_variables(bundle: Bundle) -> list[str]:
    problems = []
    for name, spec in bundle.variables.items():
        label = _file_defining(bundle, "variables", name)
        spec = spec if isinstance(spec, dict) else {}
        complex_ = spec.get("type") == "complex"
        if "default" in spec and complex_ != isinstance(spec["default"], dict | list):
            kind = "a list or mapping" if complex_ else "a single value (or set type: complex)"
            problems.append(f"{label}: variables.{name}.default: expected {kind}")
        for target_name, target in bundle.targets.items():
            overrides = _mapping(target).get("variables") or {}
            has_value = "default" in spec or "lookup" in spec or name in overrides
            if not has_value:
                problems.append(
                    f"{label}: variables.{name}: no default and no value in target "
                    f"{target_name!r}; the CLI refuses to deploy without one"
                )
            if name in overrides:
                value = _target_variable_value(overrides[name])
                if value is not None and complex_ != isinstance(value, dict | list):
                    problems.append(
                        f"{_file_defining(bundle, 'targets', target_name)}: "
                        f"targets.{target_name}.variables.{name}: value does not match the "
                        f"variable's type ({'complex' if complex_ else 'string'})"
                    )
    return problems


def _target_variable_value(override: Any) -> Any:
    if isinstance(override, dict) and set(override) <= {"default", "description", "lookup", "type"}:
        return override.get("default")
    return override


def _check_artifacts(bundle: Bundle) -> list[str]:
    problems = []
    for name, spec in bundle.artifacts.items():
        spec = spec or {}
        path = bundle.root / spec.get("path", ".")
        if spec.get("type") == "whl" and not (
            (path / "pyproject.toml").is_file() or (path / "setup.py").is_file()
        ):
            problems.append(
                f"databricks.yml: artifacts.{name}.path: no pyproject.toml or setup.py in {path}"
            )
    return problems


def _check_jobs(bundle: Bundle, distribution: str, load_entry_points: bool) -> list[str]:
    problems = []
    for key, job in bundle.jobs.items():
        label = bundle.resource_files[("jobs", key)]
        prefix = f"resources.jobs.{key}"
        tasks = [t for t in _mapping(job).get("tasks") or [] if isinstance(t, dict)]
        problems += [f"{label}: {p}" for p in _task_graph_problems(tasks, prefix)]
        problems += [f"{label}: {p}" for p in _dynamic_reference_problems(job, tasks, prefix)]
        problems += [
            f"{label}: {p}" for p in _environment_problems(bundle, job, tasks, prefix, label)
        ]
        problems += [
            f"{label}: {p}"
            for p in _wheel_task_problems(tasks, prefix, distribution, load_entry_points)
        ]
    return problems


def _task_graph_problems(tasks: list[dict[str, Any]], prefix: str) -> list[str]:
    problems = []
    keys = [t.get("task_key") for t in tasks]
    for dup in sorted({k for k in keys if keys.count(k) > 1}):
        problems.append(f"{prefix}.tasks: task_key {dup!r} is used more than once")
    graph: dict[str, list[str]] = {}
    for i, task in enumerate(tasks):
        deps = [d.get("task_key") for d in task.get("depends_on") or [] if isinstance(d, dict)]
        for j, dep in enumerate(deps):
            if dep not in keys:
                problems.append(
                    f"{prefix}.tasks[{i}].depends_on[{j}].task_key: no task {dep!r} in this job"
                )
        graph[task.get("task_key")] = [d for d in deps if d in keys]
    cycle = _find_cycle(graph)
    if cycle:
        problems.append(f"{prefix}.tasks: depends_on has a cycle: {' -> '.join(cycle)}")
    return problems


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "active"
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == "active":
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def _dynamic_reference_problems(
    job: dict[str, Any], tasks: list[dict[str, Any]], prefix: str
) -> list[str]:
    declared = {p.get("name") for p in job.get("parameters") or [] if isinstance(p, dict)}
    task_keys = {t.get("task_key") for t in tasks}
    problems = []
    for path, text in _strings(job, prefix):
        for ref in _DYNAMIC_REFERENCE.findall(text):
            problem = _dynamic_reference_problem(ref, declared, task_keys)
            if problem:
                problems.append(f"{path}: {{{{{ref}}}}}: {problem}")
    return problems


def _dynamic_reference_problem(ref: str, declared: set[str], task_keys: set[str]) -> str | None:
    parts = ref.split(".")
    namespace = parts[0]
    if namespace == "tasks":
        if len(parts) < 3 or parts[1].strip("`") not in task_keys:
            return "no such task in this job"
        return None
    if namespace == "backfill":
        return None
    if namespace not in _DYNAMIC_FIELDS:
        return f"unknown namespace {namespace!r}; Databricks passes it on as literal text"
    if len(parts) < 2 or parts[1] not in _DYNAMIC_FIELDS[namespace]:
        return f"unknown field; {namespace}.* has {sorted(_DYNAMIC_FIELDS[namespace])}"
    if parts[:2] == ["job", "parameters"]:
        name = ".".join(parts[2:]).strip("`")
        if name not in declared:
            return f"job parameter {name!r} is not declared in parameters (declared: {sorted(declared)})"
    return None


def _environment_problems(
    bundle: Bundle, job: dict[str, Any], tasks: list[dict[str, Any]], prefix: str, label: str
) -> list[str]:
    environments = {
        e.get("environment_key"): e for e in job.get("environments") or [] if isinstance(e, dict)
    }
    problems = []
    for i, task in enumerate(tasks):
        key = task.get("environment_key")
        if key is not None and key not in environments:
            problems.append(
                f"{prefix}.tasks[{i}].environment_key: no environment {key!r} in this job"
            )
    wheel_dirs = {
        (bundle.root / _mapping(spec).get("path", ".") / "dist").resolve()
        for spec in bundle.artifacts.values()
        if _mapping(spec).get("type") == "whl"
    }
    file_dir = (bundle.root / label).parent
    for j, (env_key, env) in enumerate(environments.items()):
        deps = _mapping(env.get("spec")).get("dependencies") or []
        for k, dep in enumerate(deps):
            local_wheel = isinstance(dep, str) and dep.endswith(".whl") and dep.startswith(".")
            if local_wheel and (file_dir / dep).resolve().parent not in wheel_dirs:
                problems.append(
                    f"{prefix}.environments[{j}].spec.dependencies[{k}]: {dep!r} "
                    f"(environment {env_key!r}) is not in the dist/ folder of a whl artifact"
                )
    return problems


def _wheel_task_problems(
    tasks: list[dict[str, Any]], prefix: str, distribution: str, load_entry_points: bool
) -> list[str]:
    scripts = _console_scripts(distribution)
    problems = []
    for i, task in enumerate(tasks):
        wheel = task.get("python_wheel_task")
        if not isinstance(wheel, dict):
            continue
        path = f"{prefix}.tasks[{i}].python_wheel_task"
        package = str(wheel.get("package_name", ""))
        if (
            _normalize(package) != _normalize(distribution)
            or importlib.util.find_spec(package) is None
        ):
            problems.append(
                f"{path}.package_name: {package!r} is not the importable package of the "
                f"{distribution!r} distribution"
            )
        entry = wheel.get("entry_point")
        if entry not in scripts:
            problems.append(
                f"{path}.entry_point: {entry!r} is not a console_scripts entry point of "
                f"{distribution!r} (has: {', '.join(sorted(scripts))})"
            )
        elif load_entry_points:
            problems += _entry_point_load_problem(scripts[entry], f"{path}.entry_point")
    return problems


def _console_scripts(distribution: str) -> dict[str, importlib.metadata.EntryPoint]:
    dist = importlib.metadata.distribution(distribution)
    return {ep.name: ep for ep in dist.entry_points if ep.group == "console_scripts"}


def _entry_point_load_problem(ep: importlib.metadata.EntryPoint, path: str) -> list[str]:
    try:
        target = ep.load()
    except Exception as exc:
        return [f"{path}: {ep.name} = {ep.value} cannot be loaded: {type(exc).__name__}: {exc}"]
    if not callable(target):
        return [f"{path}: {ep.name} = {ep.value} is not callable"]
    return []


# ---------------------------------------------------------------------------------------
# Strict comparison of a YAML value with a databricks-bundles model
# ---------------------------------------------------------------------------------------


def _check_model(model: type, value: Any, path: str, label: str) -> list[str]:
    """Field-by-field check (unknown keys, missing required keys, types, enum values), then
    the model's own from_dict as the final word."""
    problems = [f"{label}: {p}" for p in _check_type(model, value, path)]
    if not problems:
        try:
            model.from_dict(copy.deepcopy(value))  # type: ignore[attr-defined]
        except (TypeError, ValueError) as exc:
            problems.append(f"{label}: {path}: {model.__name__}.from_dict rejects it: {exc}")
    return problems


def _check_type(tp: Any, value: Any, path: str) -> list[str]:
    if tp is Any:
        return []
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _check_union(typing.get_args(tp), value, path)
    if origin is Variable:
        return [] if _is_reference(value) else [f"{path}: expected a ${{...}} reference"]
    if origin is list:
        return _check_list(typing.get_args(tp)[0], value, path)
    if origin is dict:
        return _check_dict(typing.get_args(tp)[1], value, path)
    if dataclasses.is_dataclass(tp):
        return _check_dataclass(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        allowed = [m.value for m in tp]
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    return _check_scalar(tp, value, path)


def _check_union(args: tuple[Any, ...], value: Any, path: str) -> list[str]:
    if value is None and type(None) in args:
        return []
    if _is_reference(value) and any(typing.get_origin(a) is Variable for a in args):
        return []
    candidates = [a for a in args if a is not type(None) and typing.get_origin(a) is not Variable]
    results = [_check_type(a, value, path) for a in candidates]
    if any(not r for r in results):
        return []
    return results[0] if results else [f"{path}: unexpected value {value!r}"]


def _check_list(item_type: Any, value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{path}: expected a list, got {type(value).__name__}"]
    return [p for i, item in enumerate(value) for p in _check_type(item_type, item, f"{path}[{i}]")]


def _check_dict(value_type: Any, value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping, got {type(value).__name__}"]
    return [p for k, v in value.items() for p in _check_type(value_type, v, f"{path}.{k}")]


def _check_dataclass(cls: Any, value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping ({cls.__name__}), got {type(value).__name__}"]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [_unknown_key(cls.__name__, key, fields, path) for key in value if key not in fields]
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in value:
            if required:
                problems.append(f"{path}.{name}: required key of {cls.__name__} is missing")
            continue
        problems += _check_type(hints[name], value[name], f"{path}.{name}")
    return problems


def _unknown_key(owner: str, key: str, allowed: Iterable[str], path: str) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
    return f"{path}.{key}: unknown key for {owner}; {hint}"


def _check_scalar(tp: Any, value: Any, path: str) -> list[str]:
    # The CLI normalises YAML scalars the same way: "42" is an int, "true" a bool, 42 a str.
    accepts: dict[Any, Callable[[Any], bool]] = {
        str: lambda v: isinstance(v, str | int | float | bool),
        int: lambda v: (
            (isinstance(v, int) and not isinstance(v, bool))
            or (isinstance(v, str) and v.lstrip("-").isdigit())
        ),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool) or v in _TRUE_FALSE,
    }
    if tp not in accepts:
        return [f"{path}: cannot check values of type {tp!r}"]
    if _is_reference(value) or accepts[tp](value):
        return []
    return [f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}"]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and bool(_FULL_REFERENCE.match(value))


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a YAML tree with its dotted path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def _dotted(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _deep_merge(base: Any, override: Any) -> Any:
    """The CLI's target merge: mappings recursively, keyed lists (tasks...) by key."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return _merge_keyed_lists(base, override)
    return override


def _merge_keyed_lists(base: list[Any], override: list[Any]) -> list[Any]:
    for key in ("task_key", "job_cluster_key", "environment_key"):
        if all(isinstance(i, dict) and key in i for i in base + override):
            merged = {i[key]: i for i in base}
            for item in override:
                merged[item[key]] = _deep_merge(merged.get(item[key], {}), item)
            return list(merged.values())
    return base + override


def _file_defining(bundle: Bundle, section: str, name: str) -> str:
    for label, data in bundle.files.items():
        if name in _mapping(data.get(section)):
            return label
    return "databricks.yml"


def _mapping(value: Any) -> dict[str, Any]:
    """``value`` if it is a mapping, else {} (the schema check reports the wrong shape)."""
    return value if isinstance(value, dict) else {}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


def _format(problems: list[str]) -> str:
    return "\n".join(problems)


def test_bundle_has_no_problems() -> None:
    problems = check_bundle(REPO_ROOT)
    assert not problems, _format(problems)


def test_wheel_entry_points_load_to_callables() -> None:
    problems = [p for p in check_bundle(REPO_ROOT, load_entry_points=True) if "entry_point" in p]
    assert not problems, _format(problems)


def _job() -> dict[str, Any]:
    jobs = load_bundle(REPO_ROOT).jobs
    assert list(jobs) == ["order_pipeline"], "the design has exactly one job"
    return jobs["order_pipeline"]


def test_job_graph_is_the_designed_workflow() -> None:
    # DESIGN.md: bronze_<entity> x4 in parallel -> silver_customers, silver_products ->
    # silver_orders (needs customers) -> silver_line_items (needs orders, products) -> gold.
    expected = {
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
    actual = {
        t["task_key"]: {d["task_key"] for d in t.get("depends_on", [])} for t in _job()["tasks"]
    }
    assert actual == expected


def test_job_settings_follow_the_design() -> None:
    job = _job()
    assert [p["name"] for p in job["parameters"]] == [
        "catalog",
        "schema",
        "landing_root",
        "checkpoint_root",
        "full_refresh",
        "as_of",
    ]
    assert job["max_concurrent_runs"] == 1
    assert job["queue"] == {"enabled": True}
    assert job["schedule"]["pause_status"] == "${var.schedule_pause_status}"
    assert job["email_notifications"]["on_failure"] == "${var.notification_emails}"
    assert {t["environment_key"] for t in job["tasks"]} == {"default"}
    [environment] = job["environments"]
    assert environment["spec"]["dependencies"] == ["../dist/*.whl"]


def test_targets_dev_paused_per_user_and_prod_unpaused_as_service_principal() -> None:
    bundle = load_bundle(REPO_ROOT)
    dev, prod = bundle.targets["dev"], bundle.targets["prod"]
    assert dev["mode"] == "development" and dev["default"] is True
    assert dev["variables"]["schedule_pause_status"] == "PAUSED"
    assert "${workspace.current_user.short_name}" in dev["variables"]["schema"]
    assert prod["mode"] == "production"
    assert prod["variables"]["schedule_pause_status"] == "UNPAUSED"
    assert prod["run_as"] == {"service_principal_name": "${var.service_principal_name}"}
    assert prod["workspace"]["root_path"].startswith("/Workspace/")
    assert any(p["level"] == "CAN_MANAGE" for p in prod["permissions"])


def test_volumes_back_the_landing_and_checkpoint_roots() -> None:
    bundle = load_bundle(REPO_ROOT)
    [schema] = bundle.resources["schemas"].values()
    assert schema == {**schema, "catalog_name": "${var.catalog}", "name": "${var.schema}"}
    volumes = bundle.resources["volumes"]
    for variable, volume_key in (("landing_root", "landing"), ("checkpoint_root", "checkpoints")):
        volume = volumes[volume_key]
        assert volume["catalog_name"] == "${var.catalog}"
        assert volume["schema_name"] == "${resources.schemas.order_pipeline.name}"
        expected = f"/Volumes/${{var.catalog}}/${{var.schema}}/{volume['name']}"
        assert bundle.variables[variable]["default"] == expected


# Each case: file, text to replace (first occurrence), replacement, words the problem names.
BROKEN_BUNDLES = {
    "unknown task field": (
        "resources/jobs.yml",
        "        - task_key: bronze_orders\n",
        "        - task_key: bronze_orders\n          max_retrys: 2\n",
        [
            "resources/jobs.yml",
            "resources.jobs.order_pipeline.tasks[2].max_retrys",
            "unknown key for Task; did you mean 'max_retries'?",
        ],
    ),
    "undefined variable": (
        "resources/jobs.yml",
        "default: ${var.catalog}",
        "default: ${var.catalgo}",
        ["resources/jobs.yml", "parameters[0].default", "catalgo", "not declared"],
    ),
    "missing entry point": (
        "resources/jobs.yml",
        "entry_point: order-pipeline-gold",
        "entry_point: order-pipeline-golden",
        ["resources/jobs.yml", "python_wheel_task.entry_point", "order-pipeline-golden"],
    ),
    "undeclared job parameter": (
        "resources/jobs.yml",
        '"{{job.parameters.full_refresh}}"',
        '"{{job.parameters.fullrefresh}}"',
        ["resources/jobs.yml", "tasks[0].python_wheel_task.parameters", "fullrefresh"],
    ),
    "dependency cycle": (
        "resources/jobs.yml",
        "        - task_key: bronze_customers\n",
        "        - task_key: bronze_customers\n          depends_on:\n            - task_key: gold\n",
        ["resources/jobs.yml", "cycle", "gold"],
    ),
    "unknown dependency": (
        "resources/jobs.yml",
        "            - task_key: silver_line_items\n",
        "            - task_key: silver_lineitems\n",
        ["resources/jobs.yml", "depends_on[0].task_key", "silver_lineitems"],
    ),
    "wrong type": (
        "resources/jobs.yml",
        "max_concurrent_runs: 1",
        "max_concurrent_runs: one",
        ["resources/jobs.yml", "max_concurrent_runs", "expected int"],
    ),
    "bad enum in volume": (
        "resources/schema.yml",
        "volume_type: MANAGED",
        "volume_type: MANAGD",
        ["resources/schema.yml", "resources.volumes.landing.volume_type", "MANAGD"],
    ),
    "target overrides undeclared variable": (
        "databricks.yml",
        "      schedule_pause_status: UNPAUSED\n",
        "      schedule_pause_status: UNPAUSED\n      scheme: prod\n",
        ["databricks.yml", "targets.prod.variables.scheme", "not declared"],
    ),
    "unknown top-level key": (
        "databricks.yml",
        "include:",
        "includes:",
        ["databricks.yml", "includes"],
    ),
    "bad target mode": (
        "databricks.yml",
        "mode: production",
        "mode: prod",
        ["databricks.yml", "targets.prod.mode", "'prod'"],
    ),
}


def _copy_bundle(destination: Path) -> Path:
    shutil.copy(REPO_ROOT / "databricks.yml", destination / "databricks.yml")
    shutil.copy(REPO_ROOT / "pyproject.toml", destination / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "resources", destination / "resources")
    return destination


def _break(root: Path, file: str, old: str, new: str) -> None:
    path = root / file
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{file} no longer contains {old!r}: update the test case"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_an_unbroken_copy_has_no_problems(tmp_path: Path) -> None:
    assert check_bundle(_copy_bundle(tmp_path)) == []


@pytest.mark.parametrize("case", list(BROKEN_BUNDLES))
def test_a_broken_bundle_is_reported_naming_file_and_key(tmp_path: Path, case: str) -> None:
    file, old, new, expected_words = BROKEN_BUNDLES[case]
    root = _copy_bundle(tmp_path)
    _break(root, file, old, new)

    problems = check_bundle(root)

    matching = [p for p in problems if all(word in p for word in expected_words)]
    assert matching, f"no problem names {expected_words}; got:\n{_format(problems)}"


def test_the_schema_subset_itself_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(BUNDLE_CONFIG_SCHEMA)
