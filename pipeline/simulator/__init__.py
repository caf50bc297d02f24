"""Loopback servers speaking the OpenAI, Anthropic, Mistral and Gemini (OpenAI-compatible)
chat protocols, with fault injection and rate-limit windows.

The default "provider" when no API key is set, and the peer of every integration test::

    from pipeline.simulator import EndpointProfile, SimulatorServer

    with SimulatorServer() as sim:
        base_url = sim.add_endpoint("eu-openai", EndpointProfile(rate_429=0.1, seed=7))
        client = openai.OpenAI(base_url=base_url, api_key="sk-sim", max_retries=0)
        claude = sim.add_endpoint("eu-claude", EndpointProfile(protocol="anthropic", rpm=50))
        anthropic.Anthropic(base_url=claude, api_key="sk-sim", max_retries=0)
        ...
        sim.requests("eu-openai")      # what it saw: status, fault, tokens, prompt hash
        sim.tokens_served()            # (prompt, completion) totals of 200 answers
        sim.stats()                    # per endpoint: counts by fault and status, tokens

``SimulatorProcess`` runs the same server in a child process (``python -m
pipeline.simulator``). Answers are built deterministically from the first user message and
fit the requested JSON schema; usage follows ``tokens.py`` (four characters a token) for
every protocol.

Each vendor's batch API is served too: OpenAI's Files + Batch API on openai endpoints,
Anthropic's Message Batches on anthropic ones, Mistral's files and batch jobs on mistral
ones (upload, create, retrieve, list, cancel, results), with jobs that take the profile's
``batch_turnaround_s`` on the server's clock; their lines are answered like chat requests
and logged with ``RequestRecord.batch_id``.

Modules: ``server`` (thread, socket), ``process`` (child process), ``app`` (routes,
answering), ``exchange`` (a request's draws, answer and log record, shared with batches),
``batch_openai`` (the files routes, and OpenAI's batches), ``batch_anthropic``,
``batch_mistral``, over ``batch_http`` (their endpoint and key checks), ``batch_jobs``
(jobs, files, their schedule) and ``batch_lines`` (input files, answering a line),
``faults`` (which fault a request gets, and its error), ``protocols`` (the
table of wires) over ``wire`` (their interface) and ``wire_openai`` / ``wire_gemini`` /
``wire_anthropic`` / ``wire_mistral``, ``answers`` over
``schema_gen`` + ``fillers`` + ``hints`` (what the model says), ``state``, ``tokens``.
Profiles (what an endpoint does) live in ``pipeline.sim_profiles``, outside this package,
so that ``pipeline.config`` can read them without importing the servers.
"""

from pipeline.sim_profiles import NO_RESPONSE, EndpointProfile, Fault, ProtocolName, RequestRecord

from .process import SimulatorProcess
from .protocols import base_url
from .server import SimulatorServer, serve_forever
from .tokens import chars_for_tokens, completion_tokens, prompt_tokens

__all__ = [
    "NO_RESPONSE",
    "EndpointProfile",
    "Fault",
    "ProtocolName",
    "RequestRecord",
    "SimulatorProcess",
    "SimulatorServer",
    "base_url",
    "chars_for_tokens",
    "completion_tokens",
    "prompt_tokens",
    "serve_forever",
]
