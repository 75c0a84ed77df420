"""Which Whisper token an adapter's decoder is prompted with, chosen once when training starts.

- A language Whisper has: its own token (``<|sw|>``).
- A language Whisper lacks (``TrainConfig.language_token``):
  - ``proxy``: a Whisper language's token: ``TrainConfig.proxy``, else the language table's (``ary`` -> ``ar``), else
    the language Whisper's own language ID finds most often in up to ``DETECT_CLIPS`` training clips;
  - ``new``: a token ``<|xx|>`` of its own, added to the base (``base/language_tokens.py``) with the proxy's
    embedding row as its start, and trained with the adapter (peft ``trainable_token_indices``).
What was chosen, and why, goes into the adapter's metadata (``language_token``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from whisper_lora.base.language_tokens import add_language_token
from whisper_lora.languages import resolve_language

DETECT_CLIPS = 32  # training clips (evenly spread) Whisper's language ID is asked about when no proxy is known
log = logging.getLogger("whisper_lora")


@dataclass(frozen=True)
class TokenChoice:
    """The decoder token of an adapter, and how it was chosen."""

    mode: str  # own (Whisper's token of the language), proxy, or new
    token: str  # the Whisper token code in the decoder prefix (sw; ar for ary; gn when new)
    proxy: str | None = None  # the Whisper language standing in (proxy), or whose row the new token started from
    source: str | None = None  # where the proxy came from: config, table, detected
    detected: dict[str, int] = field(default_factory=dict)  # Whisper's language ID over the clips asked: {code: n}

    def record(self) -> dict:
        """The metadata's ``language_token`` record ({} for a language with its own token)."""
        if self.mode == "own":
            return {}
        out = {"mode": self.mode, "proxy": self.proxy, "proxy_source": self.source}
        return {**out, "detected": dict(self.detected)} if self.detected else out


def detect_proxy(model, processor, audio_paths: list[str]) -> tuple[str, dict[str, int]]:
    """The language Whisper's own language ID gives most of ``audio_paths`` (up to ``DETECT_CLIPS``, evenly spread),
    and the count of each language it gave."""
    from whisper_lora.data.audio import load_audio
    from whisper_lora.inference.language_id import language_evidence, spread

    paths = spread(audio_paths, DETECT_CLIPS)
    evidence = language_evidence(model, processor, [load_audio(p) for p in paths])
    votes = Counter(code for code, _ in evidence.detected())
    ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[0][0], dict(ranked)


def choose_token(cfg, model, processor, train_audio: Callable[[], list[str]], known: dict | None = None) -> TokenChoice:
    """The ``TokenChoice`` of ``cfg`` (a ``TrainConfig``) on the loaded base; a new token is added to ``model`` and
    ``processor`` here. ``train_audio``: reads the training clips' paths, called only when a proxy must be detected.
    ``known``: the choice a resumed run made (its checkpoint's), taken as it is, never detected again."""
    if known:
        choice = TokenChoice(**known)
        if choice.mode == "new":
            add_language_token(model, processor.tokenizer, choice.token, init_from=choice.proxy)
        return choice
    lang = resolve_language(cfg.language)
    if lang.has_token:
        return TokenChoice("own", lang.code)
    detected: dict[str, int] = {}
    if cfg.proxy:
        proxy, source = resolve_language(cfg.proxy).code, "config"
    elif lang.whisper:
        proxy, source = lang.whisper, "table"
    else:
        proxy, detected = detect_proxy(model, processor, train_audio())
        source = "detected"
        log.info("%s has no Whisper token: Whisper's language ID calls its training clips %s", lang.name, detected)
    if cfg.language_token == "new":
        add_language_token(model, processor.tokenizer, lang.code, init_from=proxy)
        log.info("language token: <|%s|> added, its row started from <|%s|> (%s)", lang.code, proxy, source)
        return TokenChoice("new", lang.code, proxy, source, detected)
    log.info("language token: %s is decoded as <|%s|> (proxy from the %s)", lang.code, proxy, source)
    return TokenChoice("proxy", proxy, proxy, source, detected)
