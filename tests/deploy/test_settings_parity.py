"""Every env var the manifests pass is a setting its process reads; the required ones are set."""

from __future__ import annotations

import copy

import pytest

from processor.cli import app as cli
from tests.deploy.check import ROOT, Report, load_template
from tests.deploy.settings_parity import (
    DEPLOYABLES,
    check_settings_parity,
    container_env,
    env_names,
    fraudstream_containers,
)
from tests.deploy.tools import Manifest

TEMPLATE = load_template(ROOT / "k8s")


def containers(objects: list[Manifest], deployable: str) -> list[dict[str, str]]:
    return [
        container_env(objects, c, TEMPLATE)[0]
        for _, c in fraudstream_containers(objects)
        if (c.get("args") or [""])[0] == deployable
    ]


def test_known_names_come_from_the_settings_classes() -> None:
    worker = set().union(*(env_names(c) for c in DEPLOYABLES["worker"]))
    api = env_names(DEPLOYABLES["api"][0])
    assert {"FRAUD_KAFKA_BOOTSTRAP", "FRAUD_PARTITIONS", "FRAUD_METRICS_PORT"} <= worker
    assert {"FRAUD_LLM_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL"} <= worker
    assert "FRAUD_LLM_API_KEY" not in worker  # the key is read only under its OpenAI name
    assert {"FRAUD_API_HOST", "FRAUD_API_TOKENS_FILE"} <= api
    assert "FRAUD_PARTITIONS" not in api


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_process_gets_only_what_it_reads(report: Report, overlay: str) -> None:
    objects = report.rendered[overlay]
    assert check_settings_parity(objects, TEMPLATE) == []
    (worker,) = containers(objects, "worker")
    (api,) = containers(objects, "api")
    assert worker["FRAUD_METRICS_PORT"] == "9102"
    assert worker["FRAUD_PARTITIONS"] == {"dev": "4", "prod": "12"}[overlay]
    assert api["FRAUD_API_HOST"] == "0.0.0.0"
    assert "FRAUD_API_TOKENS_FILE" in api and "OPENAI_API_KEY" not in api
    assert "FRAUD_PARTITIONS" not in api


def test_manifests_run_real_cli_commands(report: Report) -> None:
    commands = {c.name for c in cli.registered_commands}
    for objects in report.rendered.values():
        for _, container in fraudstream_containers(objects):
            assert container["args"][0] in commands


def test_container_ports_match_the_settings(report: Report) -> None:
    for objects in report.rendered.values():
        for obj, container in fraudstream_containers(objects):
            env = container_env(objects, container, TEMPLATE)[0]
            port = {"worker": "FRAUD_METRICS_PORT", "api": "FRAUD_API_PORT"}[container["args"][0]]
            declared = {str(p["containerPort"]) for p in container["ports"]}
            assert env[port] in declared, obj["metadata"]["name"]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (("fraudstream-worker", "FRAUD_WORKER_COUNT", "3"), "FRAUD_WORKER_COUNT is not a setting"),
        (("fraudstream-api", "FRAUD_PARTITIONS", "4"), "FRAUD_PARTITIONS is not a setting the api"),
        (("fraudstream-worker", "FRAUD_BATCH_SIZE", "many"), "Settings.batch_size"),
        (("fraudstream-worker", "FRAUD_LLM_CONCURRENCY", "0"), "NarratorSettings.concurrency"),
        (("fraudstream-shared", "FRAUD_KAFKA_BOOTSTRAP", ""), "required FRAUD_KAFKA_BOOTSTRAP"),
        (("fraudstream-api", "FRAUD_API_TOKENS_FILE", ""), "FRAUD_API_TOKENS or FRAUD_API_TOK"),
    ],
)
def test_a_wrong_setting_fails(report: Report, change: tuple[str, str, str], said: str) -> None:
    objects = copy.deepcopy(report.rendered["prod"])
    name, key, value = change
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)
    config["data"][key] = value
    found = check_settings_parity(objects, TEMPLATE)
    assert any(said in p for p in found), found


def test_a_missing_secret_key_fails(report: Report) -> None:
    objects = report.rendered["prod"]
    template = copy.deepcopy(TEMPLATE)
    assert template is not None
    del template["stringData"]["FRAUD_REDIS_URL"]
    found = check_settings_parity(objects, template)
    assert sum("has no key FRAUD_REDIS_URL" in p for p in found) == 2, found
