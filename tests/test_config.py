"""Configuration fails on load, naming the file and the key at fault."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from builders import edit_text

from order_pipeline.common.config import (
    ConfigError,
    Entity,
    SettingError,
    conf_dir,
    dependency_order,
    load_entities,
    load_profile,
)
from order_pipeline.quality.rules import load_rules

pytestmark = pytest.mark.usefixtures("repository_conf")  # every dataset check


@pytest.fixture
def conf_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "conf"
    shutil.copytree(conf_dir(), target)
    monkeypatch.setenv("ORDER_PIPELINE_CONF", str(target))
    return target


def test_contract_entities_load_with_keys_and_types() -> None:
    entities = load_entities()
    assert {n: e.key for n, e in entities.items()} == {
        "customers": "customer_id", "products": "product_id",
        "orders": "order_id", "line_items": "line_item_id",
    }  # fmt: skip
    assert entities["products"].fields["price"] == "decimal(10,2)"
    assert entities["line_items"].parents == {"order_id": "orders", "product_id": "products"}
    assert dependency_order(entities) == ["customers", "products", "orders", "line_items"]


def test_local_profile_places_everything_under_the_data_root(tmp_path: Path) -> None:
    profile = load_profile("local", tmp_path)
    root = str(tmp_path.resolve())
    assert profile.landing_root == f"{root}/landing"
    assert profile.checkpoint_root == f"{root}/checkpoints"
    assert profile.warehouse_root == f"{root}/warehouse"
    assert profile.trigger == "available_now"
    assert profile.quality.defer_max_age_seconds == 7 * 86400


def test_databricks_profile_uses_volumes_and_auto_loader(tmp_path: Path) -> None:
    profile = load_profile("databricks", tmp_path, {"catalog": "dev", "schema": "orders"})
    assert profile.landing_root == "/Volumes/dev/orders/landing"
    assert profile.source_format == "cloudFiles"


@pytest.mark.parametrize(
    ("file", "old", "new", "key"),
    [
        ("pipeline.yml", "key: order_id", "key: order_number", "entities.orders.key"),
        (
            "pipeline.yml",
            "quantity: int",
            "quantity: integer-ish",
            "entities.line_items.fields.quantity",
        ),
        (
            "pipeline.yml",
            "customer_id: customers",
            "customer_id: clients",
            "entities.orders.parents.customer_id",
        ),
        (
            "pipeline.yml",
            "customer_id: customers",
            "client_id: customers",
            "entities.orders.parents.client_id",
        ),
        ("pipeline.yml", "customer_id: customers", "customer_id: line_items", "entities"),
        (
            "pipeline.yml",
            "personal: [first_name, last_name, email,",
            "personal: [first_name, last_name, e_mail,",
            "entities.customers.personal[2]",
        ),
        (
            "pipeline.yml",
            "personal: [first_name, last_name, email,",
            "personal: [first_name, last_name, first_name,",
            "entities.customers.personal[2]",
        ),
        (
            "pipeline.yml",
            "personal: [first_name, last_name, email, phone, city]",
            "personal: email",
            "entities.customers.personal",
        ),
        (
            "pipeline.yml",
            "personal: [first_name,",
            "personl: [first_name,",
            "entities.customers.personl",
        ),
        (
            "pipeline.yml",
            "order_id: {entity: orders, on_delete: cascade}",
            "order_id: {entity: orders, on_delete: erase}",
            "entities.line_items.parents.order_id.on_delete",
        ),
        (
            "pipeline.yml",
            "order_id: {entity: orders, on_delete: cascade}",
            "order_id: {entity: orders, on_delet: cascade}",
            "entities.line_items.parents.order_id.on_delet",
        ),
        ("pipeline.yml", "marker: _deleted", "marker: 7", "deletes.marker"),
        ("pipeline.yml", "marker: _deleted", "marker: status", "deletes.marker"),
        (
            "pipeline.yml",
            "tombstone_retention: null",
            "tombstone_retention: a year",
            "deletes.tombstone_retention",
        ),
        ("local.yml", "trigger: available_now", "trigger: sometimes", "trigger"),
        (
            "local.yml",
            "warehouse_root: ${data_root}/warehouse",
            "warehouse_root: null",
            "warehouse_root",
        ),
        (
            "local.yml",
            "max_incremental_share: 0.02",
            "max_incremental_share: some",
            "gold.max_incremental_share",
        ),
        (
            "local.yml",
            "min_orders_for_incremental: 100000",
            "min_orders_for_incremental: -1",
            "gold.min_orders_for_incremental",
        ),
        ("local.yml", "defer_max_age: 7 days", "defer_max_age: a week", "quality.defer_max_age"),
        ("local.yml", "profile: local", "profile: local\nwarehouse: x", "warehouse"),
    ],
)
def test_bad_setting_names_file_and_key(
    conf_copy: Path, file: str, old: str, new: str, key: str
) -> None:
    edit_text(conf_copy / file, (old, new))
    with pytest.raises(ConfigError) as error:
        load_entities() if file == "pipeline.yml" else load_profile("local")
    assert error.value.file.endswith(file)
    assert error.value.key == key


@pytest.mark.parametrize(
    ("old", "new", "key_part"),
    [
        ("severity: defer", "severity: later", "severity"),
        ("kind: in_set", "kind: one_of", "kind"),
        ("column: quantity\n    min: 0", "column: qty\n    min: 0", "column"),
        ("parent: orders", "parent: baskets", "parent"),
        ("parent: orders", "parent: products", "parent"),  # pipeline.yml says order_id -> orders
        (
            "    strict_min: true\n    severity: quarantine\n    description: A line item orders",
            "    strict_minimum: true\n    severity: quarantine\n    description: A line item orders",
            "strict_minimum",
        ),
    ],
)
def test_bad_rule_names_file_and_key(conf_copy: Path, old: str, new: str, key_part: str) -> None:
    path = conf_copy / "quality" / "line_items.yml"
    edit_text(path, (old, new))
    entities = load_entities()
    with pytest.raises(ConfigError) as error:
        load_rules(entities["line_items"], entities)
    assert error.value.file.endswith("line_items.yml")
    assert error.value.key.startswith("rules[")
    assert key_part in error.value.key


def test_a_parent_without_its_foreign_key_rule_is_an_error(conf_copy: Path) -> None:
    path = conf_copy / "quality" / "line_items.yml"
    text = path.read_text()
    rule = text[text.index("  - name: product_exists") :]
    path.write_text(text.replace(rule, ""))
    entities = load_entities()
    with pytest.raises(ConfigError, match=r"no foreign_key rule checks line_items.product_id"):
        load_rules(entities["line_items"], entities)


def test_wider_spark_types_are_contract_types() -> None:
    for spark_type in ("long", "double", "bigint", "array<string>", "array<decimal(10,2)>", "date"):
        Entity("e", "k", "k", {"k": "string", "v": spark_type})
    for bad in ("array<array<string>>", "map<string,int>", "varchar", "decimal(10)"):
        with pytest.raises(SettingError):
            Entity("e", "k", "k", {"k": "string", "v": bad})


def test_invalid_yaml_is_reported_with_the_file(conf_copy: Path) -> None:
    (conf_copy / "pipeline.yml").write_text("entities: [unclosed\n")
    with pytest.raises(ConfigError, match=r"pipeline\.yml: <file>: not valid YAML"):
        load_entities()


@pytest.mark.parametrize(
    ("file", "old", "new", "key"),
    [
        (
            "customers.yml",
            "kind: unique_key",
            "kind: unique_keys",
            "dataset_checks[3] (key_unique).kind",
        ),
        (
            "customers.yml",
            "kind: unique_key\n    severity: fail",
            "kind: unique_key\n    severity: quarantine",
            "dataset_checks[3] (key_unique).severity",
        ),
        (
            "customers.yml",
            "    max_age: 60 days      # customers change rarely: a quiet month is normal\n",
            "",
            "dataset_checks[0] (silver_fresh).max_age",
        ),
        (
            "customers.yml",
            "max_age: 60 days ",
            "max_age: two months ",
            "dataset_checks[0] (silver_fresh).max_age",
        ),
        ("customers.yml", "of: silver ", "of: gold ", "dataset_checks[0] (silver_fresh).of"),
        ("customers.yml", "    runs: 5 ", "", "dataset_checks[2] (landed_volume).runs"),
        ("customers.yml", "factor: 10 ", "factor: 1 ", "dataset_checks[2] (landed_volume).factor"),
        ("customers.yml", "factor: 10 ", "factr: 10 ", "dataset_checks[2] (landed_volume).factr"),
        (
            "gold.yml",
            "kind: references",
            "kind: freshness",
            "dataset_checks[0] (line_item_order_exists).kind",
        ),
        (
            "gold.yml",
            "parent: orders",
            "parent: baskets",
            "dataset_checks[0] (line_item_order_exists).parent",
        ),
        (
            "gold.yml",
            "column: order_id",
            "column: order_ts",
            "dataset_checks[0] (line_item_order_exists).column",
        ),
        (
            "gold.yml",
            "    parent: orders\n",
            "",
            "dataset_checks[0] (line_item_order_exists).parent",
        ),
    ],
)
def test_bad_dataset_check_names_file_and_key(
    conf_copy: Path, file: str, old: str, new: str, key: str
) -> None:
    from order_pipeline.quality.dataset_checks import load_gold_checks
    from order_pipeline.transforms.gold import GOLD_INPUTS

    edit_text(conf_copy / "quality" / file, (old, new))
    entities = load_entities()
    with pytest.raises(ConfigError) as error:
        if file == "gold.yml":
            load_gold_checks(GOLD_INPUTS)
        else:
            load_rules(entities["customers"], entities)
    assert error.value.file.endswith(file)
    assert error.value.key == key


def test_dataset_checks_of_every_entity_and_gold_load() -> None:
    from order_pipeline.quality.dataset_checks import load_gold_checks
    from order_pipeline.transforms.gold import GOLD_INPUTS

    entities = load_entities()
    for entity in entities.values():
        kinds = [c.kind for c in load_rules(entity, entities).dataset_checks]
        assert kinds == ["freshness", "freshness", "volume", "unique_key", "reconciliation"]
    assert [c.column for c in load_gold_checks(GOLD_INPUTS)] == ["order_id", "product_id"]
