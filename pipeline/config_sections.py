"""The sections of ``docroute.yaml``, one pydantic model each; ``pipeline.config`` puts
them together as ``Config`` and loads the file.

    CorpusConfig(path=Path("corpus")).include[:2]   # ['**/*.txt', '**/*.md']
    RoutingConfig().strategy                        # 'cheapest'
    ProviderConfig.model_validate(item)             # one ``providers:`` item, checked

``corpus:`` (``CorpusConfig``, with ``ResidencyRule`` and ``JsonlConfig``), ``task:``,
``chunking:``, ``budget:``, ``routing:`` (with ``CascadeConfig``), ``providers:``
(``ProviderConfig``, its ``ModelConfig`` list and ``RateLimitConfig``) and ``output:``.
Each field's docstring documents the file; each model checks what it alone can check
(globs, the overlap below the limit, a preset that fits its kind); checks across
sections are ``Config``'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.providers.presets import get_preset
from pipeline.providers.structured import MODES_OF_KIND, StructuredMode
from pipeline.sim_profiles import EndpointProfile

__all__ = [
    "DEFAULT_INCLUDE",
    "BudgetConfig",
    "CascadeConfig",
    "ChunkingConfig",
    "ConfigModel",
    "CorpusConfig",
    "JsonlConfig",
    "ModelConfig",
    "Name",
    "OutputConfig",
    "ProviderConfig",
    "RateLimitConfig",
    "Region",
    "ResidencyRule",
    "ReuseConfig",
    "RoutingConfig",
    "ScheduleConfig",
    "TaskConfig",
    "parse_duration",
]

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Region = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class ConfigModel(BaseModel):
    """The base of every mapping in ``docroute.yaml``, the file's and each section's:
    unknown keys are refused, values are frozen, a field's docstring is its description."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ResidencyRule(ConfigModel):
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


class JsonlConfig(ConfigModel):
    text_field: str = Field(default="text", min_length=1)
    """The field of each JSON-lines record that holds its text."""
    id_field: str = Field(default="id", min_length=1)
    """The field that identifies a record: its document's path is ``<file>#<id>``."""
    per_record: bool = True
    """Each usable record is its own document (``data.jsonl#<id>``, else ``#<line>``), with
    its own row, chunks, residency from its own metadata, and results; ``false``: the whole
    file is one document whose chunks may span records, and records that disagree on
    residency get the intersection. Path rules and the manifest's file entries look at
    the file's path either way."""


DEFAULT_INCLUDE = [
    "**/*.txt",
    "**/*.md",
    "**/*.html",
    "**/*.htm",
    "**/*.pdf",
    "**/*.docx",
    "**/*.jsonl",
]


class CorpusConfig(ConfigModel):
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


class TaskConfig(ConfigModel):
    schema_name: str = Field(alias="schema")
    """Name of the output schema (see ``schemas/``), e.g. ``chunk_summary``."""
    instructions: str | None = None
    """System prompt; defaults to the schema's own instructions."""
    max_output_tokens: int = Field(default=1024, ge=16, le=200_000)
    """Upper bound on each answer's tokens; also what the budget reserves per call."""
    temperature: float | None = Field(default=0.0, ge=0, le=2)
    """Sampling temperature (``null`` leaves the provider's default)."""


class ChunkingConfig(ConfigModel):
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


class BudgetConfig(ConfigModel):
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


class CascadeConfig(ConfigModel):
    confidence_field: str | None = Field(default=None, min_length=1)
    """Field of the validated answer holding the model's confidence (dots reach into
    nested objects); an answer below ``min_confidence`` escalates to the next tier."""
    min_confidence: float = 0.7
    """Answers whose ``confidence_field`` is below this escalate."""


class RoutingConfig(ConfigModel):
    mode: Literal["sync", "batch", "auto"] = "sync"
    """``sync``: every chunk is one call at a time (the default). ``batch``: chunks go as
    provider batch jobs (half price) to every endpoint that offers them, finished within the
    vendor's 24 h window or ``schedule``'s deadline; the rest is sync. ``auto``: batch jobs
    while ``schedule``'s deadline allows, what is not back in time finished synchronously
    before it (needs ``schedule.deadline`` or ``schedule.finish_within``)."""
    batch_poll_s: float = Field(default=30.0, gt=0)
    """First wait between two reads of a batch job's status; grows 1.5× per read."""
    batch_poll_max_s: float = Field(default=300.0, gt=0)
    """Longest wait between two reads of a batch job's status."""
    jobs_in_flight: int = Field(default=64, ge=1, le=1024)
    """In ``batch`` and ``auto`` mode: Prefect batch tasks in flight at once instead of
    ``parallel_batches``, since each mostly waits for its provider job (so up to this many
    jobs, of ``batch_size`` chunks each, are outstanding together)."""
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


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> float:
    """Seconds in ``"4h"``, ``"1h30m"``, ``"90m"``, ``"2d"``, ``"45s"``.

    >>> parse_duration("1h30m")
    5400.0
    """
    found = _DURATION.match(text.strip()) if text.strip() else None
    if found is None or not any(found.groups()):
        raise ValueError(f"{text!r} is not a duration; expected e.g. 4h, 90m, 1h30m, 2d, 45s")
    d, h, m, s = (int(g or 0) for g in found.groups())
    return float(((d * 24 + h) * 60 + m) * 60 + s)


class ScheduleConfig(ConfigModel):
    """When a run must be done by (what ``routing.mode: auto | batch`` plans batch jobs for)."""

    deadline: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    """Time of day (``"06:00"``, in ``timezone``) the run must be finished by: the first
    such moment after the run started."""
    timezone: str = "UTC"
    """IANA time zone of ``deadline`` (``Europe/Paris``)."""
    finish_within: str | None = None
    """How long after its start the run must be finished (``4h``, ``90m``, ``1h30m``)."""

    @field_validator("finish_within")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; expected e.g. UTC, Europe/Paris"
            ) from None
        return value

    @model_validator(mode="after")
    def _one_deadline(self) -> ScheduleConfig:
        if self.deadline is not None and self.finish_within is not None:
            raise ValueError("set schedule.deadline or schedule.finish_within, not both")
        return self

    def deadline_after(self, started_at: float) -> float | None:
        """The epoch second the run must be done by, for a run started at ``started_at``."""
        if self.finish_within is not None:
            return started_at + parse_duration(self.finish_within)
        if self.deadline is None:
            return None
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(started_at, zone)
        hour, minute = (int(x) for x in self.deadline.split(":"))
        due = start.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if due <= start:
            due += timedelta(days=1)
        return due.timestamp()


class ReuseConfig(ConfigModel):
    """Which earlier answers a run takes instead of asking again (no call, no cost)."""

    across_runs: bool = True
    """Reuse the succeeded answer of any earlier run on the same output root whose
    idempotency key is the chunk's (same text, schema and prompt versions, model policy),
    from a region the chunk still allows: a nightly run pays only for what changed.
    ``false`` (or ``docroute run --full``): only the run's own family (its resumes and
    reruns) is reused."""
    max_age: str | None = None
    """Reuse only answers younger than this (``30d``, ``12h``), counted from when the
    answer was made, however often it was reused since; none: any age."""
    since: str | None = None
    """Reuse only answers made since this run started (a run id; ``docroute run --since``)."""

    @field_validator("max_age")
    @classmethod
    def _age(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class RateLimitConfig(ConfigModel):
    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute the endpoint allows (your account's tier)."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens per minute the endpoint allows (prompt + max output, as providers count)."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Calls in flight at this endpoint at once, across batches."""


class ModelConfig(ConfigModel):
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
    batch_input_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million input tokens through the vendor's batch API; defaults to the table.
    A model with no batch price is never sent batch jobs."""
    batch_output_per_mtok: float | None = Field(default=None, ge=0)
    """USD per million output tokens through the batch API; defaults to the table."""
    structured_output: bool = True
    """Whether the endpoint can answer structured at all; ``false`` leaves it out of routing.
    (An endpoint that only follows instructions still routes: ``structured_mode: prompt``.)"""
    structured_mode: StructuredMode | None = None
    """How the schema is asked for (``pipeline/providers/structured.py``): ``json_schema``
    (strict), ``json_schema_loose``, ``json_object_schema`` (llama-cpp-python),
    ``guided_json`` (vLLM), ``json_object`` or ``prompt`` (the schema in the prompt only),
    ``tool`` (Anthropic's forced tool call). Defaults to the preset's, else ``json_schema``.
    Answers are validated against the schema whatever the mode."""


class ProviderConfig(ConfigModel):
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
    batch: bool = True
    """Whether ``routing.mode: batch | auto`` may send this endpoint batch jobs (only where
    its adapter speaks a batch API: openai, anthropic, mistral, and presets that say so)."""

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


class OutputConfig(ConfigModel):
    root: Path | str = Path("docroute-output")
    """Folder for Parquet parts and ``catalog.duckdb`` (relative to this file), or an
    object-store URI (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``;
    pyarrow query parameters such as ``?region=…`` or ``?endpoint_override=…`` allowed).
    Credentials come from the environment (``AWS_ACCESS_KEY_ID`` …), never from here."""
    report: bool = True
    """Write each run's HTML report (``docroute report``) to ``<root>/reports/RUN_ID.html``
    at its end (for an object-store root, to the local state folder), and link it from the
    flow run's artifacts."""

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
