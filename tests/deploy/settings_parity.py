"""Settings parity: the environment the manifests give each process is exactly what it reads.

A container running the fraudstream image names its deployable by its first argument (``worker``
or ``api``). Its environment (``env`` and every ``envFrom`` ConfigMap or Secret) must hold only
names that deployable's settings classes read, the required ones must be there, and the values
must pass the settings' own validation. The known names come from the classes themselves
(``processor/settings.py``, ``processor/llm.py``, ``api/settings.py``), so a setting renamed in
code and not in the manifests fails here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic_settings import BaseSettings

from api.settings import ApiSettings
from processor.llm import NarratorSettings
from processor.settings import Settings
from tests.deploy.schemas import name_of
from tests.deploy.tools import Manifest

__all__ = [
    "DEPLOYABLES",
    "REQUIRED",
    "check_settings_parity",
    "container_env",
    "env_names",
    "fraudstream_containers",
]

DEPLOYABLES: dict[str, tuple[type[BaseSettings], ...]] = {
    "worker": (Settings, NarratorSettings),
    "api": (ApiSettings,),
}
# Unset, the process does not start (worker, api) or listens where nothing reaches it (api host).
REQUIRED: dict[str, tuple[frozenset[str], ...]] = {
    "worker": (frozenset({"FRAUD_KAFKA_BOOTSTRAP"}), frozenset({"FRAUD_REDIS_URL"})),
    "api": (
        frozenset({"FRAUD_KAFKA_BOOTSTRAP"}),
        frozenset({"FRAUD_REDIS_URL"}),
        frozenset({"FRAUD_API_HOST"}),
        frozenset({"FRAUD_API_TOKENS", "FRAUD_API_TOKENS_FILE"}),
    ),
}
PLACEHOLDER = "REPLACE_ME"


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads (prefix + field, or its env aliases)."""
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    names: set[str] = set()
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(a) for a in alias.choices if isinstance(a, str) and a.isupper()}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(prefix + field_name.upper())
    return names


def fraudstream_containers(objects: list[Manifest]) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """(workload, container) for every container that runs the fraudstream image."""
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "StatefulSet", "Job", "CronJob"):
            continue
        spec = obj["spec"].get("jobTemplate", {}).get("spec", obj["spec"])
        for container in spec["template"]["spec"].get("containers", []):
            image = str(container.get("image", "")).rsplit("/", 1)[-1]
            if image.split(":", 1)[0].split("@", 1)[0] == "fraudstream":
                yield obj, container


def _find(objects: list[Manifest], kind: str, name: str) -> Manifest | None:
    return next(
        (o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name), None
    )


def _secret_values(secret: Manifest | None) -> dict[str, str]:
    """A Secret's values; where the render has none (set out of band), placeholders."""
    if secret is None:
        return {}
    return {str(k): str(v) for k, v in (secret.get("stringData") or {}).items()}


def container_env(
    objects: list[Manifest], container: dict[str, Any], secret_template: Manifest | None
) -> tuple[dict[str, str], list[str]]:
    """The container's environment (name -> value) and the references that do not resolve."""
    env: dict[str, str] = {}
    missing: list[str] = []
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            found = _find(objects, "ConfigMap", ref)
            data = found.get("data", {}) if found else None
        else:
            ref = source["secretRef"]["name"]
            found = _find(objects, "Secret", ref) or secret_template
            data = _secret_values(found) if found else None
        if data is None:
            missing.append(f"envFrom {ref}")
            continue
        env.update({str(k): str(v) for k, v in data.items()})
    for item in container.get("env", []):
        value_from = item.get("valueFrom", {})
        if "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            found = _find(objects, "Secret", ref["name"]) or secret_template
            values = _secret_values(found)
            if ref["key"] not in values and not ref.get("optional"):
                missing.append(f"{item['name']}: secret {ref['name']} has no key {ref['key']}")
            env[item["name"]] = values.get(ref["key"], PLACEHOLDER)
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            found = _find(objects, "ConfigMap", ref["name"])
            if found is None or ref["key"] not in found.get("data", {}):
                missing.append(f"{item['name']}: configmap {ref['name']} key {ref['key']}")
            env[item["name"]] = (found or {}).get("data", {}).get(ref["key"], "")
        else:
            env[item["name"]] = str(item.get("value", ""))
    return env, missing


@contextlib.contextmanager
def environ_of(env: dict[str, str]) -> Iterator[None]:
    """Exactly ``env`` as the process environment for the block (settings read os.environ)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _validate_values(env: dict[str, str], classes: tuple[type[BaseSettings], ...]) -> list[str]:
    problems: list[str] = []
    with environ_of(env):
        for cls in classes:
            try:
                model: BaseModel = cls()
            except ValidationError as exc:
                for err in exc.errors():
                    where = ".".join(map(str, err["loc"]))
                    problems.append(f"{cls.__name__}.{where}: {err['msg']}")
                continue
            del model
    return problems


def check_settings_parity(objects: list[Manifest], secret_template: Manifest | None) -> list[str]:
    """Unknown names, missing required names, bad values, unresolved references."""
    problems: list[str] = []
    seen: set[str] = set()
    for obj, container in fraudstream_containers(objects):
        where = f"{name_of(obj)} container {container['name']}"
        args = container.get("args") or container.get("command") or []
        deployable = args[0] if args else ""
        if deployable not in DEPLOYABLES:
            problems.append(f"{where}: runs {deployable!r}, not one of {sorted(DEPLOYABLES)}")
            continue
        seen.add(deployable)
        classes = DEPLOYABLES[deployable]
        known = set().union(*(env_names(cls) for cls in classes))
        env, missing = container_env(objects, container, secret_template)
        problems += [f"{where}: unresolved {m}" for m in missing]
        for name in sorted(set(env) - known):
            problems.append(f"{where}: {name} is not a setting the {deployable} reads")
        for group in REQUIRED[deployable]:
            if not group & {k for k, v in env.items() if v}:
                problems.append(f"{where}: required {' or '.join(sorted(group))} is not set")
        problems += [f"{where}: {p}" for p in _validate_values(env, classes)]
    problems += [f"no container runs `fraudstream {d}`" for d in sorted(set(DEPLOYABLES) - seen)]
    return problems
