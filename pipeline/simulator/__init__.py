"""Loopback servers that speak the OpenAI chat-completions protocol, with fault injection.

The default "provider" when no API key is set, and the peer of every integration test::

    from pipeline.simulator import EndpointProfile, SimulatorServer

    with SimulatorServer() as sim:
        base_url = sim.add_endpoint("eu-openai", EndpointProfile(rate_429=0.1, seed=7))
        client = openai.OpenAI(base_url=base_url, api_key="sk-sim", max_retries=0)
        ...
        sim.requests("eu-openai")      # what it saw: status, fault, tokens, prompt hash
        sim.tokens_served()            # (prompt, completion) totals of 200 answers

Answers are built deterministically from the first user message and fit the requested
``response_format`` JSON schema; usage follows ``tokens.py`` (four characters a token).

Modules: ``server`` (thread, socket), ``app`` (routes, fault decisions), ``wire`` (OpenAI
bodies), ``schema_gen`` + ``fillers`` + ``hints`` (answers), ``state``, ``profiles``,
``tokens``.
"""

from .profiles import EndpointProfile, Fault, RequestRecord
from .server import SimulatorServer, serve_forever
from .tokens import chars_for_tokens, completion_tokens, prompt_tokens

__all__ = [
    "EndpointProfile",
    "Fault",
    "RequestRecord",
    "SimulatorServer",
    "chars_for_tokens",
    "completion_tokens",
    "prompt_tokens",
    "serve_forever",
]
