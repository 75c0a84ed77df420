"""Where each request goes, decided before the model decodes: its adapter (the one home of that choice), the
Whisper language token its decoder is prompted with, and the language and route its result reports."""

from __future__ import annotations

from dataclasses import dataclass

from whisper_lora.errors import ConfigError
from whisper_lora.inference.request import AUTO, ROUTE, Request
from whisper_lora.inference.routing import FORCED, RouteDecision
from whisper_lora.languages import decoder_token, resolve_language
from whisper_lora.registry.catalog import AdapterEntry, AdapterRegistry


@dataclass(frozen=True)
class PlannedInput:
    """How one input will be decoded."""

    language: str  # language reported (registry code, or Whisper's code when auto-detected)
    probability: float | None  # detection confidence; None when the language was given
    entry: AdapterEntry | None  # adapter to decode with; None for the untouched base
    whisper: str  # Whisper language token code the decoder is prompted with
    route: str = FORCED  # how the adapter was chosen


def needs_routing(request: Request) -> bool:
    """Whether ``request`` must be routed (its language detected) before it can be planned."""
    return request.language == AUTO and request.adapter in (None, ROUTE) and request.decision is None


def adapter_name(registry: AdapterRegistry, request: Request, decision: RouteDecision | None = None) -> str | None:
    """The name of the adapter ``request`` decodes with (None: the base): the one home of that choice.

    ``decision`` is the route of an ``auto`` request (``request.decision`` when it carries one). Only a given language
    is looked up here (``registry.for_language``); a named or routed adapter is taken by its name, so the Ray
    ingress, whose view of the registry may lag a replica's, never refuses what a replica would decode."""
    if request.adapter is None:
        return None
    if request.adapter != ROUTE:
        return request.adapter
    if request.language != AUTO:
        entry = registry.for_language(resolve_language(request.language).code)
        return entry.name if entry else None
    decision = decision or request.decision
    if decision is None:
        raise ConfigError("a request with language 'auto' must be routed before its adapter is chosen")
    return decision.adapter


def choose_adapter(
    registry: AdapterRegistry, request: Request, decision: RouteDecision | None = None
) -> tuple[AdapterEntry | None, str]:
    """The adapter ``request`` decodes with (None: the base) and how it was chosen (``routing`` route names); a broken
    or unknown adapter raises the registry's ``AdapterError`` with the reason."""
    name = adapter_name(registry, request, decision)
    routed = request.language == AUTO and request.adapter == ROUTE
    route = (decision or request.decision).route if routed else FORCED
    return (registry.get(name) if name else None), route


def base_token(registry: AdapterRegistry, language: str) -> str:
    """The Whisper token code the untouched base decodes ``language`` with: its own or the table's proxy, else the
    proxy of the registry's adapter for it (the base has no token for Esperanto, but the ``eo`` adapter says which
    language stood in for it); ``ConfigError`` naming the language when there is neither."""
    try:
        return decoder_token(language)
    except ConfigError:
        entry = registry.find(language)
        if entry is None:
            raise
        return entry.metadata.base_token


def plan(registry: AdapterRegistry, request: Request, decision: RouteDecision | None = None) -> PlannedInput:
    """The ``PlannedInput`` of one request (``decision``: its route, when its language is ``auto``)."""
    entry, route = choose_adapter(registry, request, decision)
    # an adapter decodes with the token it was trained with (its language's own, a proxy, or one it adds)
    if request.language != AUTO:
        info = resolve_language(request.language)
        own = entry is not None and resolve_language(entry.language).code == info.code
        return PlannedInput(
            info.code, None, entry, entry.whisper_language if own else base_token(registry, info.code), route
        )
    if request.adapter not in (None, ROUTE):  # a named adapter decodes in its own language
        return PlannedInput(resolve_language(entry.language).code, None, entry, entry.whisper_language, route)
    decision = decision or request.decision
    whisper = entry.whisper_language if entry else base_token(registry, decision.language)
    return PlannedInput(decision.language, decision.probability, entry, whisper, route)
