"""One table of languages: ISO 639-1/639-3 codes, aliases and Whisper's language tokens."""

from __future__ import annotations

from dataclasses import dataclass

from whisper_lora.errors import ConfigError, format_choices

# Whisper's own language codes (tokens ``<|xx|>``) in token-id order, as in openai/whisper.
WHISPER_LANGUAGES: tuple[str, ...] = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue"
).split()


@dataclass(frozen=True)
class Language:
    """A language the library can train or route for."""

    code: str  # the registry key: ISO 639-1 where one exists, else ISO 639-3 (``ary``)
    whisper: str | None  # Whisper's token code for the decoder prefix: its own, a proxy (``ary`` -> ``ar``), or None
    name: str  # English name
    iso3: str  # ISO 639-3 code
    espeak: str | None = None  # espeak-ng voice, for synthetic corpora

    @property
    def has_token(self) -> bool:
        """Whether Whisper has a token of its own for this language (else it is decoded under a proxy or a new one)."""
        return self.code in WHISPER_LANGUAGES


# Languages with extra knowledge (names, ISO 639-3, espeak voices, proxies).
_TABLE: tuple[Language, ...] = (
    Language("en", "en", "English", "eng", "en"),
    Language("sw", "sw", "Swahili", "swa", "sw"),
    Language("cs", "cs", "Czech", "ces", "cs"),
    Language("fr", "fr", "French", "fra", "fr"),
    Language("de", "de", "German", "deu", "de"),
    Language("es", "es", "Spanish", "spa", "es"),
    Language("ar", "ar", "Arabic", "arb", "ar"),
    Language("ary", "ar", "Moroccan Arabic (Darija)", "ary", "ar"),  # no Darija token: `ar` proxy
    Language("yo", "yo", "Yoruba", "yor", None),
    Language("ha", "ha", "Hausa", "hau", "ha"),
    Language("am", "am", "Amharic", "amh", "am"),
    Language("so", "so", "Somali", "som", None),
    Language("wo", "fr", "Wolof", "wol", None),  # no Wolof token: French is the usual proxy
    # no Whisper token and no agreed proxy: training picks one by Whisper's language ID, or adds a token
    Language("eo", None, "Esperanto", "epo", "eo"),
    Language("ga", None, "Irish", "gle", "ga"),
    Language("gn", None, "Guarani", "grn", "gn"),
    Language("ky", None, "Kyrgyz", "kir", "ky"),
    Language("om", None, "Oromo", "orm", "om"),
    Language("id", "id", "Indonesian", "ind", "id"),
    Language("ms", "ms", "Malay", "zsm", "ms"),
    Language("pt", "pt", "Portuguese", "por", "pt"),
    Language("it", "it", "Italian", "ita", "it"),
    Language("tr", "tr", "Turkish", "tur", "tr"),
    Language("pl", "pl", "Polish", "pol", "pl"),
    Language("sk", "sk", "Slovak", "slk", "sk"),
    Language("nl", "nl", "Dutch", "nld", "nl"),
)

# Extra spellings users type, mapped onto registry codes.
_ALIASES: dict[str, str] = {
    "darija": "ary",
    "dar": "ary",  # common mistake: ISO `dar` is Dargwa, but DVoice users mean Darija
    "swahili": "sw",
    "kiswahili": "sw",
    "czech": "cs",
    "english": "en",
    "swh": "sw",
}


# Close relatives: languages a router is most likely to confuse with each other (mutually intelligible, or one
# family branch with much shared vocabulary). Symmetric by construction (``relatives``). Routing learns an adapter's
# relatives apart from it, in the speech it learns ``other`` from (inference/routing.py).
_RELATED: tuple[tuple[str, ...], ...] = (
    ("cs", "sk", "pl"),
    ("id", "ms", "jw", "su"),
    ("es", "pt", "gl", "ca", "it"),
    ("fr", "ca", "it", "oc"),
    ("eo", "es", "it"),
    ("nl", "af", "de"),
    ("da", "no", "nn", "sv"),
    ("hr", "sr", "bs", "sl"),
    ("ru", "uk", "be"),
    ("bg", "mk"),
    ("ar", "ary"),
    ("hi", "ur"),
    ("tr", "az"),
    ("ga", "gd", "cy"),
    ("sw", "ln", "sn"),
    ("fa", "tg"),
)


def relatives(code: str) -> tuple[str, ...]:
    """The close relatives of a language (registry codes), from the family table; () when none are listed."""
    code = resolve_language(code).code
    out: list[str] = []
    for group in _RELATED:
        if code in group:
            out += [c for c in group if c != code and c not in out]
    return tuple(out)


def _iso3(code: str) -> str:
    import langcodes

    try:
        return langcodes.Language.get(code).to_alpha3()
    except (LookupError, ValueError):
        return code


def _index() -> dict[str, Language]:
    """Every key a user may type: Whisper's codes and English names and their ISO 639-3 codes (from transformers'
    tokenizer tables and langcodes), then the hand-written table (proxies, espeak voices) and aliases on top."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    index: dict[str, Language] = {}
    for code in WHISPER_LANGUAGES:
        lang = Language(code, code, LANGUAGES.get(code, code).title(), _iso3(code))
        index[code] = index[lang.iso3] = lang
    for name, code in TO_LANGUAGE_CODE.items():  # "swedish", "castilian", "mandarin", ...
        if code in index:
            index.setdefault(name, index[code])
    for lang in _TABLE:  # replaces the generated entry of its code wherever that one was indexed
        for key in [k for k, v in index.items() if v.code == lang.code]:
            index[key] = lang
        index[lang.code] = lang
        index.setdefault(lang.iso3, lang)
        index[lang.name.lower()] = lang
    for alias, code in _ALIASES.items():
        index[alias] = index[code]
    return index


_INDEX = _index()


def resolve_language(code: str) -> Language:
    """Resolve an ISO 639-1/639-3 code, an English name or an alias (``sw``, ``swa``, ``swahili``, ``ary``, ``darija``)."""
    import langcodes

    key = str(code).strip().lower()
    if key.startswith("<|") and key.endswith("|>"):
        key = key[2:-2]
    if key in _INDEX:
        return _INDEX[key]
    try:  # other spellings of a known code (e.g. ISO 639-3 macrolanguage members, deprecated tags)
        tag = langcodes.standardize_tag(key)
    except (LookupError, ValueError):
        tag = None
    if tag in _INDEX:
        return _INDEX[tag]
    if tag and tag.isalpha() and 2 <= len(tag) <= 3 and langcodes.tag_is_valid(tag):
        known = _INDEX.get(_iso3(tag))  # another code of a language the table knows (jv: Whisper's jw)
        # else an ISO 639 language this table does not know: no Whisper token, no proxy, no voice
        return known or Language(tag, None, tag, _iso3(tag))
    raise ConfigError(
        f"unknown language {code!r}; valid codes: {format_choices(_INDEX)}, or any other ISO 639 language code"
    )


def token_text(code: str) -> str:
    """The decoder token of a Whisper token code: ``<|sw|>``."""
    return f"<|{code}|>"


def decoder_token(language: str) -> str:
    """The Whisper token code a language is decoded with when no adapter says otherwise: its own, or the table's
    proxy (``ary`` -> ``ar``); ``ConfigError`` for a language Whisper lacks that has no proxy here."""
    lang = resolve_language(language)
    if lang.whisper is None:
        raise ConfigError(
            f"Whisper has no token for {lang.name} ({lang.code}) and no proxy is known for it: decode it with an "
            "adapter trained for it (language_token: proxy or new), or name a Whisper language"
        )
    return lang.whisper


def whisper_token(code: str) -> str:
    """The ``<|xx|>`` decoder token for a language code or alias (``decoder_token``)."""
    return token_text(decoder_token(code))
