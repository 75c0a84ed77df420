"""Which adapter an input of unknown language goes to: a router learnt from the adapters' own training speech.

Whisper's language ID is weakest on the languages adapters exist for (whisper-base calls synthetic
Swahili Japanese or Thai, and real Czech Polish a third of the time), so ``auto`` routing does not
trust it alone. Every adapter trained by ``whisper-lora train`` carries a language profile
(``registry/language_profile.py``): what its training utterances look like to the untouched base,
pooled encoder state and Whisper's language-ID log-probabilities. The router is a small multinomial
logistic regression over those two, one class per adapter language plus ``other``, learnt when a
``Transcriber`` starts (well under a second) from the profiles and a background of speech in
languages without an adapter (``routing_backgrounds/<base fingerprint>.safetensors``, shipped for
whisper-base). Adding or removing an adapter refits it; no adapter is retrained.

How one input is routed (``route`` in every result):

- ``router``: the classifier picked an adapter with probability >= ``threshold`` (default 0.6); or it picked
  ``other`` and the base decodes, in Whisper's best guess among the languages without a profile;
- ``abstained``: no class reached ``threshold``: the base decodes, as for ``other``;
- ``whisper-lid``: decided by Whisper's language ID, for adapters without a profile (older ones,
  logged once) and for bases without a routing background: that adapter when Whisper names its
  language with probability >= ``threshold``, else the base;
- ``forced``: the caller gave the language or the adapter (set by ``Transcriber``, not here).

``candidates`` (``Transcriber(languages=[...])``, ``serve --languages``) restricts everything to a
deployment's languages: classes, and Whisper's guesses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from whisper_lora.errors import AdapterError
from whisper_lora.inference.language_id import LanguageEvidence
from whisper_lora.languages import relatives, resolve_language
from whisper_lora.registry.language_profile import LanguageProfile, read_profile, read_profile_file

log = logging.getLogger("whisper_lora")

ROUTER, ABSTAINED, WHISPER_LID, FORCED = "router", "abstained", "whisper-lid", "forced"
LID_WEIGHT = 0.3  # scale of the language-ID log-probabilities next to the unit-scaled encoder state
LID_FLOOR = -20.0
WEIGHT_DECAY = 1e-2
HARD_CLASSES = True  # each hard negative (a relative of an adapter's language) is a class, counted as other
CONFUSIONS = 3  # Whisper's likeliest languages for an adapter's speech, taken as hard negatives too ...
CONFUSION_P = 0.1  # ... when it gives them at least this probability on average
DEFAULT_THRESHOLD = 0.6  # the lowest with every held-out language of bench/routing.py at >= 95% (0.5: English 92%)


@dataclass(frozen=True)
class RouteDecision:
    """Where one input goes and why."""

    language: str  # registry code when an adapter decodes, else Whisper's code
    probability: float  # the router's (or Whisper's, for whisper-lid and the base) confidence
    adapter: str | None  # adapter name, None for the untouched base
    route: str  # router, abstained, whisper-lid (forced is set by the caller)


def background_for(base_fingerprint: str) -> LanguageProfile | None:
    """The shipped routing background for a base (by fingerprint), if there is one."""
    root = resources.files("whisper_lora") / "routing_backgrounds"
    path = root / f"{base_fingerprint}.safetensors"
    return read_profile_file(str(path)) if path.is_file() else None


def _features(logprobs: np.ndarray, encoder_mean: np.ndarray) -> np.ndarray:
    h = encoder_mean / np.maximum(np.linalg.norm(encoder_mean, axis=1, keepdims=True), 1e-6)
    h = h * np.sqrt(encoder_mean.shape[1])
    return np.concatenate([h, LID_WEIGHT * np.maximum(logprobs, LID_FLOOR)], 1).astype(np.float32)


class _Classifier:
    """Multinomial logistic regression on standardised features, class-balanced, L2; LBFGS from zero
    (deterministic)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int):
        xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
        self.mean, self.std = xt.mean(0), xt.std(0) + 1e-3
        z = (xt - self.mean) / self.std
        counts = torch.bincount(yt, minlength=n_classes).float()
        weight = counts.sum() / (n_classes * counts.clamp(min=1))
        self.w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
        self.b = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ self.w + self.b, yt, weight=weight)
            loss = loss + WEIGHT_DECAY * (self.w**2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.w, self.b = self.w.detach(), self.b.detach()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = (torch.from_numpy(x) - self.mean) / self.std
        return torch.softmax(z @ self.w + self.b, -1).numpy()


class Router:
    """Routes inputs of unknown language to the registry's adapters (see the module docstring).

    ``entries`` are the registry's healthy adapters (name, language, whisper_language, path);
    ``base_languages`` are the base's Whisper language codes (``LanguageEvidence.languages``).
    """

    def __init__(
        self,
        entries: Sequence,
        base_fingerprint: str,
        base_languages: Sequence[str],
        candidates: Sequence[str] | None = None,
        background: LanguageProfile | None | str = "shipped",
    ):
        self.base_languages = tuple(base_languages)
        self.candidates = None if candidates is None else tuple(resolve_language(c).code for c in candidates)
        allowed = None if self.candidates is None else set(self.candidates)
        self.entries = [e for e in entries if allowed is None or e.language in allowed]
        self.reasons: dict[str, str] = {}  # adapter -> why Whisper's language ID routes it
        profiles: dict[str, LanguageProfile] = {}
        for e in self.entries:
            try:
                profile = read_profile(e.path)
            except AdapterError as err:
                profile, why = None, str(err)
            else:
                why = "it has no language profile (train it again, or: whisper-lora adapters profile)"
            if profile is not None and profile.languages != self.base_languages:
                profile, why = None, "its language profile was computed on a base with other language tokens"
            elif profile is not None and base_fingerprint not in ("unknown", profile.base_fingerprint):
                profile, why = None, f"its language profile is of another base ({profile.base_fingerprint})"
            if profile is None:
                self.reasons[e.name] = why
            else:
                profiles[e.name] = profile
        profiled_languages = {e.language for e in self.entries if e.name in profiles}
        other_needed = allowed is None or not allowed <= profiled_languages  # inputs may be of no adapter's language
        if background == "shipped":
            background = background_for(base_fingerprint)
        if not other_needed:
            background = None
        elif profiles:
            keep = (
                []
                if background is None
                else [i for i, lang in enumerate(background.row_languages) if lang not in profiled_languages]
            )
            if keep:
                background = background.subset(keep)
            else:  # no examples of "other": the classifier could not say no to anything
                why = f"there is no routing background for this base ({base_fingerprint})"
                self.reasons.update({name: why for name in profiles})
                profiles.clear()
        for name, why in self.reasons.items():
            log.warning("auto routing uses Whisper's language ID for adapter %s: %s", name, why)
        self.classes = [e for e in self.entries if e.name in profiles]  # adapter classes, then ``other``
        self._classifier, self._has_other = None, bool(profiles) and other_needed
        self.hard_negatives: dict[str, list[str]] = {}  # adapter -> the background languages learnt apart from it
        if self.classes:
            xs = [_features(profiles[e.name].logprobs, profiles[e.name].encoder_mean) for e in self.classes]
            ys = [np.full(len(x), k) for k, x in enumerate(xs)]
            n = len(self.classes) + int(self._has_other)
            if self._has_other:
                xs.append(_features(background.logprobs, background.encoder_mean))
                hard = self._hard_languages(background, profiles)
                # ``other``, then (HARD_CLASSES) one class per hard negative, as much weight as an adapter's; their
                # probabilities are ``other``'s when routing
                label = {lang: n + i for i, lang in enumerate(hard)} if HARD_CLASSES else {}
                ys.append(np.array([label.get(lang, n - 1) for lang in background.row_languages]))
                n += len(label)
            self._classifier = _Classifier(np.concatenate(xs), np.concatenate(ys), n)
        # Whisper's guesses (for the base, and whisper-lid adapters): among the candidates, without the languages
        # the classifier has a class for (it already said no to those)
        exclude = {e.detected_as for e in self.classes}
        allowed = [resolve_language(c).whisper for c in (self.candidates or self.base_languages)]
        self._whisper_languages = [c for c in allowed if c in self.base_languages and c not in exclude] or None
        # Whisper naming a language stands for an adapter only when it is the adapter's own (or the table's proxy)
        self._by_whisper = {e.detected_as: e for e in self.entries if e.name in self.reasons and e.detected_as}

    def _hard_languages(self, background: LanguageProfile, profiles: dict[str, LanguageProfile]) -> list[str]:
        """The background's languages an adapter is most easily confused with: a close relative of its language in
        the family table, or one of the ``CONFUSIONS`` languages Whisper's own ID gives its training speech most (with
        ``CONFUSION_P`` on average). Recomputed whenever the adapters change."""
        present = set(background.row_languages)
        for e in self.classes:
            lid = np.exp(profiles[e.name].logprobs).mean(0)  # Whisper's mean probability of each language
            top = [i for i in np.argsort(-lid)[:CONFUSIONS] if lid[i] >= CONFUSION_P]
            confused = [background.languages[i] for i in top]
            hard = [c for c in dict.fromkeys([*relatives(e.language), *confused]) if c in present and c != e.language]
            if hard:
                self.hard_negatives[e.name] = hard
        return sorted({c for cs in self.hard_negatives.values() for c in cs})

    def describe(self) -> dict:
        """How each adapter is routed, for ``/health`` and logs."""
        return {
            "candidates": list(self.candidates) if self.candidates else None,
            "adapters": {
                e.name: {"route": WHISPER_LID, "reason": self.reasons[e.name]}
                if e.name in self.reasons
                else {"route": ROUTER, **({"hard_negatives": h} if (h := self.hard_negatives.get(e.name)) else {})}
                for e in self.entries
            },
        }

    def route(self, evidence: LanguageEvidence, threshold: float = DEFAULT_THRESHOLD) -> list[RouteDecision]:
        """One decision per input of ``evidence``; below ``threshold`` confidence the base decodes."""
        if self._classifier is not None:
            probs = self._classifier.probabilities(_features(evidence.logprobs, evidence.encoder_mean))
            k = len(self.classes) + int(self._has_other)
            probs = np.concatenate([probs[:, : k - 1], probs[:, k - 1 :].sum(1, keepdims=True)], 1)  # hard: other
        whisper = evidence.detected(self._whisper_languages)
        out = []
        for i, (code, q) in enumerate(whisper):
            route = WHISPER_LID
            if self._classifier is not None:
                k = int(probs[i].argmax())
                if k < len(self.classes) and probs[i, k] >= threshold:
                    e = self.classes[k]
                    out.append(RouteDecision(e.language, float(probs[i, k]), e.name, ROUTER))
                    continue
                route = ROUTER if probs[i, k] >= threshold else ABSTAINED
            entry = self._by_whisper.get(code)
            if entry is not None and q >= threshold:
                out.append(RouteDecision(entry.language, q, entry.name, WHISPER_LID))
            else:
                out.append(RouteDecision(code, q, None, route))
        return out


def build_background(
    model, processor, base_info, speech: dict[str, Sequence], progress: bool = True
) -> LanguageProfile:
    """A routing background from speech in languages without an adapter (``{language: signals}``),
    computed with ``model`` as it is (the untouched base, loaded as ``Transcriber`` loads it)."""
    from whisper_lora.inference.language_id import language_evidence

    parts, row_languages = [], []
    for language, signals in speech.items():
        code = resolve_language(language).code
        parts.append(language_evidence(model, processor, list(signals), progress))
        row_languages += [code] * len(signals)
    if not parts:
        raise AdapterError("a routing background needs speech in at least one language")
    return LanguageProfile(
        parts[0].languages,
        np.concatenate([p.logprobs for p in parts]),
        np.concatenate([p.encoder_mean for p in parts]),
        base_info.fingerprint,
        base_info.precision,
        tuple(row_languages),
    )
