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
    whisper: str  # Whisper's language token code used in the decoder prefix
    name: str  # English name
    iso3: str  # ISO 639-3 code
    espeak: str | None = None  # espeak-ng voice, for synthetic corpora


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
    Language("id", "id", "Indonesian", "ind", "id"),
    Language("ms", "ms", "Malay", "zsm", "ms"),
    Language("pt", "pt", "Portuguese", "por", "pt"),
    Language("it", "it", "Italian", "ita", "it"),
    Language("tr", "tr", "Turkish", "tur", "tr"),
    Language("pl", "pl", "Polish", "pol", "pl"),
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
    raise ConfigError(f"unknown language {code!r}; valid codes: {format_choices(_INDEX)}")


def whisper_token(code: str) -> str:
    """The ``<|xx|>`` decoder token for a language code or alias."""
    return f"<|{resolve_language(code).whisper}|>"
