"""``docroute.yaml``: typed, validated once at start, before any document is read.

    cfg = load_config("examples/docroute.yaml")
    cfg.budget.run_usd            # 0.5
    cfg.providers[0].region       # "eu"

Relative paths in the file (``corpus.path``, ``corpus.residency_manifest``,
``output.root``) are resolved against the folder of the file, so a config means the same
thing wherever docroute is started; an ``output.root`` URI (``s3://…``) is taken as given.
API keys are never in the file: a provider names the environment variable that holds
its key (``api_key_env``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.providers.presets import get_preset
from pipeline.providers.structured import MODES_OF_KIND, StructuredMode
from pipeline.sim_profiles import EndpointProfile

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Region = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ResidencyRule(_Model):
    match: str
    """Glob over the document's path relative to ``corpus.path`` (``eu/**``, ``**/*.md``)."""
    regions: list[Region] = Field(min_length=1)
    """Regions a matching document may be sent to."""

    @field_validator("match")
    @classmethod
    def _valid_glob(cls, value: str) -> str:
        from pipeline.globs import compile_glob

        compile_glob(value)
        return value


class JsonlConfig(_Model):
    text_field: str = Field(default="text", min_length=1)
    """The field of each JSON-lines record that holds its text."""
    id_field: str = Field(default="id", min_length=1)
    """The field that identifies a record (shown before its text)."""


DEFAULT_INCLUDE = [
    "**/*.txt",
    "**/*.md",
    "**/*.html",
    "**/*.htm",
    "**/*.pdf",
    "**/*.docx",
    "**/*.jsonl",
]


class CorpusConfig(_Model):
    path: Path
    """Folder holding the documents (relative to this file)."""
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE), min_length=1)
    """Globs of the files to read (default: every supported format)."""
    exclude: list[str] = Field(default_factory=list)
    """Globs of files to leave out, applied after ``include``."""
    max_file_mb: float = Field(default=50.0, gt=0)
    """Files larger than this get an error row (``too_large``) instead of being read."""
    extract_workers: int = Field(default=2, ge=1, le=64)
    """Processes extracting CPU-heavy formats (PDF, docx) in parallel."""
    extract_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    """Seconds a PDF or docx may take to extract; one still parsing then (a parser stuck
    in a loop, a file crafted to be slow) gets an error row (``timeout``), its worker
    process is killed and replaced, and the run goes on."""
    jsonl: JsonlConfig = Field(default_factory=JsonlConfig)
    """Which fields of ``.jsonl`` records hold the text and the id."""
    residency: list[ResidencyRule] = Field(default_factory=list)
    """Path rules in order; the first whose glob matches gives a document its allowed
    regions, unless its own metadata or the manifest decides (most specific wins:
    metadata, then manifest, then these rules, then ``residency_default``)."""
    residency_default: Literal["deny"] | list[Region] = "deny"
    """Regions for documents nothing else decides: ``deny`` (sent nowhere) or a list."""
    residency_field: str | None = Field(default="residency", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """Metadata field naming a document's own regions: a key of the YAML front matter of
    ``.md``/``.txt`` files, a field of ``.jsonl`` records (records that disagree get the
    intersection). ``null``: documents' metadata is not read."""
    residency_manifest: Path | None = None
    """CSV or JSONL file (relative to this file) mapping documents, by ``path`` (relative
    to ``corpus.path``) or ``doc_id``, to ``regions``; beats the path rules. Checked at
    start: a bad line is an error naming the file and line."""

    @field_validator("include", "exclude")
    @classmethod
    def _valid_globs(cls, values: list[str]) -> list[str]:
        from pipeline.globs import compile_glob

        for value in values:
            compile_glob(value)
        return values


class TaskConfig(_Model):
    schema_name: str = Field(alias="schema")
    """Name of the output schema (see ``schemas/``), e.g. ``chunk_summary``."""
    instructions: str | None = None
    """System prompt; defaults to the schema's own instructions."""
    max_output_tokens: int = Field(default=1024, ge=16, le=200_000)
    """Upper bound on each answer's tokens; also what the budget reserves per call."""
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    """Sampling temperature (``null`` leaves the provider's default)."""


class ChunkingConfig(_Model):
    max_tokens: int = Field(default=800, ge=16, le=200_000)
    """Upper bound on a chunk's tokens (by the chunker's counter)."""
    overlap_tokens: int = Field(default=64, ge=0)
    """Tokens shared by consecutive chunks of a document."""
    counter: str = Field(
        default="auto",
        pattern=r"^(auto|chars(/\d+(\.\d+)?)?|tiktoken:(o200k_base|cl100k_base))$",
    )
    """How tokens are counted: ``auto`` (tiktoken o200k when its files are installed by
    ``make``, else a calibrated character estimate), ``tiktoken:o200k_base``,
    ``tiktoken:cl100k_base``, ``chars`` or ``chars/<chars per token>``. Recorded per run."""

    @model_validator(mode="after")
    def _overlap_below_max(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than "
                f"max_tokens ({self.max_tokens})"
            )
        return self


class BudgetConfig(_Model):
    run_usd: float = Field(gt=0)
    """Hard cap on what one run may spend, in USD (the sum of its ledger costs)."""
    document_usd: float | None = Field(default=None, gt=0)
    """Hard cap on what the chunks of one document may spend in a run, in USD (none if unset)."""
    monthly_usd: float | None = Field(default=None, gt=0)
    """Hard cap on the ledger costs of all runs over a rolling 30 days; a run may spend at
    most what the other runs of the window left (none if unset)."""
    on_exhausted: Literal["stop", "downgrade"] = "stop"
    """When a call's worst case no longer fits: ``stop`` skips the chunk
    (``budget_exhausted``); ``downgrade`` tries cheaper allowed endpoints instead and from
    then on uses only endpoints cheaper than the one that no longer fit."""


class CascadeConfig(_Model):
    confidence_field: str | None = Field(default=None, min_length=1)
    """Field of the validated answer holding the model's confidence (dots reach into
    nested objects); an answer below ``min_confidence`` escalates to the next tier."""
    min_confidence: float = 0.7
    """Answers whose ``confidence_field`` is below this escalate."""


class RoutingConfig(_Model):
    strategy: Literal["cheapest", "ordered", "cascade"] = "cheapest"
    """How allowed candidates are ordered: ``cheapest`` worst-case cost first; ``ordered``
    the config's order (providers, then their models); ``cascade`` cheapest first,
    escalating to the next dearer tier when an answer is invalid or not confident enough."""
    cascade: CascadeConfig | None = None
    """For ``strategy: cascade``: which answer field says how confident the model is."""
    max_attempts: int = Field(default=6, ge=1, le=50)
    """Attempts per chunk across all endpoints, repairs and retries included."""
    repair_attempts: int = Field(default=1, ge=0, le=5)
    """Repair prompts per endpoint after an answer fails validation, before rerouting."""
    retries_per_endpoint: int = Field(default=2, ge=0, le=20)
    """Retries of one endpoint after transient errors (429, 5xx, timeouts)."""
    backoff_initial_s: float = Field(default=0.5, ge=0)
    """First retry delay; doubles per retry, with jitter; ``retry-after`` wins if longer."""
    backoff_max_s: float = Field(default=30.0, ge=0)
    """Longest retry delay."""
    request_timeout_s: float = Field(default=120.0, gt=0)
    """Timeout of one HTTP request."""
    concurrency: int = Field(default=32, ge=1, le=4096)
    """Calls in flight at once within a batch."""
    batch_size: int = Field(default=250, ge=1, le=100_000)
    """Chunks per Prefect task (one task per batch, never one per chunk)."""
    parallel_batches: int = Field(default=2, ge=1, le=16)
    """Batch tasks in flight at once (overlap hides each batch's slowest chunks)."""
    cooldown_after_failures: int = Field(default=5, ge=1)
    """Consecutive failed attempts after which an endpoint is cooled down."""
    cooldown_s: float = Field(default=30.0, ge=0)
    """How long a cooled-down endpoint gets no traffic (others in the chunk's regions do)."""
    document_failures_max: int = Field(default=5, ge=0)
    """After this many chunks of one document failed the same way (answers cut off, invalid,
    too large, refused as a bad request), the rest of its chunks are skipped without a call
    (reason ``document_breaker``), so one bad document cannot eat the budget. 0: never."""
    identical_errors_max: int = Field(default=3, ge=0)
    """An endpoint that has not answered once in the run and gives one identical error
    (same status and message) on this many distinct chunks is disabled for the run
    (outcome ``endpoint_disabled``): a server refusing the request shape, not bad luck.
    0: never."""

    @model_validator(mode="after")
    def _cascade_needs_strategy(self) -> RoutingConfig:
        if self.cascade is not None and self.strategy != "cascade":
            raise ValueError(
                f"cascade settings need strategy 'cascade', not {self.strategy!r} "
                "(set routing.strategy: cascade, or remove routing.cascade)"
            )
        return self


class RateLimitConfig(_Model):
    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute the endpoint allows (your account's tier)."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens per minute the endpoint allows (prompt + max output, as providers count)."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Calls in flight at this endpoint at once, across batches."""


class ModelConfig(_Model):
    id: str = Field(min_length=1)
    """Model id as the provider knows it (a dated snapshot pins it)."""
    input_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million input tokens; defaults to the shipped price table."""
    output_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million output tokens; defaults to the shipped price table."""
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million cached input tokens; defaults to the table, else the input price."""
    context_window: int | None = Field(default=None, ge=256)
    """Tokens the model accepts (prompt + output); defaults to the table."""
    max_output_tokens: int | None = Field(default=None, ge=16)
    """Largest answer the model can give; defaults to the table."""
    structured_output: bool = True
    """Whether the endpoint can answer structured at all; ``false`` leaves it out of routing.
    (An endpoint that only follows instructions still routes: ``structured_mode: prompt``.)"""
    structured_mode: StructuredMode | None = None
    """How the schema is asked for (``pipeline/providers/structured.py``): ``json_schema``
    (strict), ``json_schema_loose``, ``json_object_schema`` (llama-cpp-python),
    ``guided_json`` (vLLM), ``json_object`` or ``prompt`` (the schema in the prompt only),
    ``tool`` (Anthropic's forced tool call). Defaults to the preset's, else ``json_schema``.
    Answers are validated against the schema whatever the mode."""


class ProviderConfig(_Model):
    name: Name
    """Unique endpoint name, as it appears in the ledger."""
    kind: Literal["openai", "anthropic", "mistral", "openai_compatible"]
    """Wire protocol / adapter (see ``pipeline/providers``)."""
    preset: (
        Literal[
            "gemini", "groq", "together", "xai", "vllm", "ollama", "llamacpp", "llama_cpp_python"
        ]
        | None
    ) = None
    """For ``openai_compatible``: a known service (its base URL and quirks)."""
    region: Region
    """Where this endpoint processes data (``eu``, ``us``, ``on-prem``, …)."""
    base_url: str | None = None
    """API base URL (with ``/v1``); the SDK's default when empty."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable holding the API key; ``null`` for keyless endpoints."""
    simulate: Literal["auto", "always", "never"] = "auto"
    """``auto``: use the built-in simulator when the key variable is unset."""
    simulator: EndpointProfile = Field(default_factory=EndpointProfile)
    """How the simulator behaves when it stands in for this endpoint (latency, faults)."""
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    """The endpoint's quota; dispatch stays under it."""

    @model_validator(mode="after")
    def _preset_fits_kind(self) -> ProviderConfig:
        if self.preset is not None and self.kind != "openai_compatible":
            raise ValueError(
                f"preset {self.preset!r} needs kind openai_compatible, not {self.kind!r}"
            )
        if self.kind == "openai_compatible" and self.preset is None and not self.base_url:
            raise ValueError("kind openai_compatible needs a base_url or a preset")
        allowed = MODES_OF_KIND[self.kind]
        for j, m in enumerate(self.models):
            if m.structured_mode is not None and m.structured_mode not in allowed:
                raise ValueError(
                    f"models[{j}].structured_mode: {m.structured_mode!r} cannot be sent by kind "
                    f"{self.kind}; expected one of: {', '.join(sorted(allowed))}"
                )
        return self

    def structured_mode(self, model: ModelConfig) -> StructuredMode:
        """The mode ``model`` is asked in: its own, else its preset's, else ``json_schema``."""
        if model.structured_mode is not None:
            return model.structured_mode
        preset = get_preset(self.preset)
        return preset.structured_mode if preset is not None else "json_schema"

    models: list[ModelConfig] = Field(min_length=1)
    """Models offered by this endpoint."""


class OutputConfig(_Model):
    root: Path | str = Path("docroute-output")
    """Folder for Parquet parts and ``catalog.duckdb`` (relative to this file), or an
    object-store URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``;
    pyarrow query parameters such as ``?region=…`` or ``?endpoint_override=…`` allowed).
    Credentials come from the environment (``AWS_ACCESS_KEY_ID`` …), never from here."""

    @field_validator("root", mode="before")
    @classmethod
    def _folder_or_uri(cls, value: Any) -> Any:
        from urllib.parse import urlsplit

        from pipeline.store.fs import SCHEMES, is_uri, secret_params

        if not is_uri(value):
            return Path(value) if isinstance(value, str) else value
        scheme = urlsplit(value).scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r}; expected a folder or a URI starting with "
                + ", ".join(f"{s}://" for s in SCHEMES)
            )
        secret = secret_params(value)
        if secret or "@" in urlsplit(value).netloc:
            raise ValueError(
                f"credentials in the URI ({', '.join(secret) or 'user:password@'}) are refused; "
                "give them through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS)"
            )
        return value


class Config(_Model):
    corpus: CorpusConfig
    task: TaskConfig
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    budget: BudgetConfig
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    providers: list[ProviderConfig] = Field(min_length=1)
    output: OutputConfig = Field(default_factory=OutputConfig)

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
        raise ConfigError(format_validation_error(path, exc)) from None
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


def format_validation_error(path: Path, exc: ValidationError) -> str:
    """One line per problem: where (``providers[1].region``), what was given, what was expected."""
    lines = [f"{path} is not a valid docroute config ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        where = _loc(err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_fields_at(err["loc"][:-1]))
            lines.append(f"  {where}: unknown field; expected one of: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"  {where}: required field is missing")
        else:
            given = _short(err.get("input"))
            lines.append(f"  {where}: {err['msg']} (got {given})")
    return "\n".join(lines)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


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
