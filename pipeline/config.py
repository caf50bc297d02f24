"""``docroute.yaml``: typed, validated once at start, before any document is read.

    cfg = load_config("examples/docroute.yaml")
    cfg.budget.run_usd            # 0.5
    cfg.providers[0].region       # "eu"

This module holds the file as a whole: ``Config`` (its sections put together, the checks
across them, the fingerprint a run records) and ``load_config`` (read, apply dotted
overrides, validate, resolve paths), with its one-line-per-problem error messages. Each
section's model (``CorpusConfig``, ``RoutingConfig``, ``ProviderConfig`` …) is in
``pipeline.config_sections``.

Relative paths in the file (``corpus.path``, ``corpus.residency_manifest``,
``output.root``) are resolved against the folder of the file, so a config means the same
thing wherever docroute is started; an ``output.root`` URI (``s3://…``) is taken as given.
API keys are never in the file: a provider names the environment variable that holds
its key (``api_key_env``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from pipeline.config_sections import (
    BudgetConfig,
    ChunkingConfig,
    ConfigModel,
    CorpusConfig,
    OutputConfig,
    ProviderConfig,
    ReuseConfig,
    RoutingConfig,
    ScheduleConfig,
    TaskConfig,
)
from pipeline.errors import ConfigError


class Config(ConfigModel):
    corpus: CorpusConfig
    task: TaskConfig
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    budget: BudgetConfig
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    providers: list[ProviderConfig] = Field(min_length=1)
    output: OutputConfig = Field(default_factory=OutputConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    reuse: ReuseConfig = Field(default_factory=ReuseConfig)

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        seen: set[str] = set()
        for p in providers:
            if p.name in seen:
                raise ValueError(f"provider name {p.name!r} is used twice; names must be unique")
            seen.add(p.name)
        return providers

    @field_validator("task")
    @classmethod
    def _known_schema(cls, task: TaskConfig) -> TaskConfig:
        from schemas import SCHEMAS

        if task.schema_name not in SCHEMAS:
            known = ", ".join(sorted(SCHEMAS))
            raise ValueError(f"unknown schema {task.schema_name!r}; expected one of: {known}")
        return task

    @model_validator(mode="after")
    def _auto_needs_deadline(self) -> Config:
        s = self.schedule
        if self.routing.mode == "auto" and s.deadline is None and s.finish_within is None:
            raise ValueError(
                'routing.mode auto needs a deadline: set schedule.deadline ("06:00", with '
                'schedule.timezone) or schedule.finish_within ("4h"), or use mode batch'
            )
        return self

    def fingerprint(self) -> str:
        """Hash of the effective configuration (recorded with each run)."""
        blob = self.model_dump_json(by_alias=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Config:
    """Read, validate and resolve a config file; raise ConfigError naming what is wrong.

    ``overrides`` are dotted keys applied before validation, e.g. ``{"budget.run_usd": 2}``.
    """
    path = Path(path)
    data = _read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc, data, overrides)) from None
    return _resolve_paths(cfg, path.resolve().parent)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a mapping (corpus:, task:, …), got {type(data).__name__}"
        )
    return data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``value`` at ``dotted``; list items by index or by ``name`` (``providers.openai-eu``)."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for key in parents:
        node = _child(node, key, dotted) if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        items = node
        index = _index(items, leaf, dotted)
        items[index] = value
    else:
        node[leaf] = value


def _child(items: list[Any], key: str, dotted: str) -> Any:
    return items[_index(items, key, dotted)]


def _index(items: list[Any], key: str, dotted: str) -> int:
    if key.isdigit() and int(key) < len(items):
        return int(key)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    names = [item.get("name") for item in items if isinstance(item, dict) and "name" in item]
    raise ConfigError(
        f"override {dotted!r}: no item {key!r} in that list; expected an index below "
        f"{len(items)}" + (f" or one of the names {names}" if names else "")
    )


def _resolve_paths(cfg: Config, base: Path) -> Config:
    corpus = cfg.corpus.model_copy(update={"path": (base / cfg.corpus.path).resolve()})
    if corpus.residency_manifest is not None:
        from pipeline.policy.manifest import load_manifest

        manifest = (base / corpus.residency_manifest).resolve()
        load_manifest(manifest)  # a bad manifest stops here, before any document is read
        corpus = corpus.model_copy(update={"residency_manifest": manifest})
    root = cfg.output.root  # a URI is not a path: it is taken as it is
    if isinstance(root, Path):
        root = (base / root).resolve()
    output = cfg.output.model_copy(update={"root": root})
    return cfg.model_copy(update={"corpus": corpus, "output": output})


def format_validation_error(
    path: Path,
    exc: ValidationError,
    data: Any = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """One line per problem: where (``providers[mistral-eu].kind``: list items by their
    ``name`` when they have one, given ``data``), what was given, what was expected. A
    problem in a value an override set names the override (``--set KEY=VALUE``), not the
    file."""
    lines = []
    from_overrides = 0
    for err in exc.errors():
        where = _loc(err["loc"], data)
        given = err.get("input")
        override = _override_of(err["loc"], data, overrides or {})
        if override is not None and overrides:
            from_overrides += 1
            where = f"--set {override}={str(overrides[override])[:60]}"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_fields_at(err["loc"][:-1]))
            lines.append(f"  {where}: unknown field; expected one of: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"  {where}: required field is missing")
        elif isinstance(given, dict | list):  # a whole section: what is wrong says enough
            lines.append(f"  {where}: {err['msg']}")
        else:
            lines.append(f"  {where}: {err['msg']} (got {_short(given)})")
    n = exc.error_count()
    if from_overrides == n:
        head = f"{'an override is' if n == 1 else 'overrides are'} not valid for {path}:"
    else:
        head = f"{path} is not a valid docroute config ({n} problem(s)):"
    return "\n".join([head, *lines])


def _loc(loc: tuple[Any, ...], data: Any = None) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            name = _item_name(data, part)
            out += f"[{name if name is not None else part}]"
            data = data[part] if isinstance(data, list) and part < len(data) else None
        else:
            out += f".{part}" if out else str(part)
            data = data.get(part) if isinstance(data, dict) else None
    return out or "(top level)"


def _item_name(items: Any, index: int) -> str | None:
    """The ``name`` of list item ``index`` (a provider's, a model's), if it has one."""
    if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
        name = items[index].get("name") or items[index].get("id")
        return name if isinstance(name, str) else None
    return None


def _override_of(loc: tuple[Any, ...], data: Any, overrides: dict[str, Any]) -> str | None:
    """The override key (as given) that set the value at ``loc``, if one did."""
    keys: list[set[str]] = []  # each step of ``loc`` as an override may spell it
    for part in loc:
        if isinstance(part, int):
            name = _item_name(data, part)
            keys.append({str(part), name} if name else {str(part)})
            data = data[part] if isinstance(data, list) and part < len(data) else None
        else:
            keys.append({str(part)})
            data = data.get(part) if isinstance(data, dict) else None
    for dotted in overrides:
        parts = dotted.split(".")
        if len(parts) <= len(keys) and all(p in k for p, k in zip(parts, keys, strict=False)):
            return dotted
    return None


def _short(value: Any) -> str:
    from pipeline.store.fs import RootURI, is_uri

    if is_uri(value):  # a URI given with credentials is shown without them
        value = str(RootURI.of(value))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names (by alias) of the config model at ``loc``, for 'expected one of' hints."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
