import pytest

from whisper_lora.errors import ConfigError
from whisper_lora.languages import WHISPER_LANGUAGES, resolve_language, whisper_token


@pytest.mark.parametrize("key", ["sv", "swe", "swedish", "Swedish", "<|sv|>"])
def test_any_whisper_language_by_code_iso3_or_name(key):
    lang = resolve_language(key)
    assert (lang.code, lang.whisper, lang.name, lang.iso3) == ("sv", "sv", "Swedish", "swe")


def test_every_whisper_language_resolves_by_its_name_and_iso3():
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    for code in WHISPER_LANGUAGES:
        lang = resolve_language(code)
        assert resolve_language(LANGUAGES[code]).code == code == resolve_language(lang.iso3).code


def test_hand_written_proxies_and_aliases_win():
    assert resolve_language("darija").code == "ary" and whisper_token("ary") == "<|ar|>"
    assert resolve_language("swa").espeak == "sw" and resolve_language("kiswahili").code == "sw"
    assert resolve_language("wol").whisper == "fr"  # no Wolof token: French proxy
    assert resolve_language("castilian").code == "es"  # transformers' own aliases


def test_unknown_language_lists_valid_codes():
    with pytest.raises(ConfigError, match="unknown language 'xx'; valid codes: af, afr, afrikaans"):
        resolve_language("xx")


def test_any_iso_code_resolves_and_other_codes_of_known_languages_stay_theirs():
    gn = resolve_language("grn")
    assert (gn.code, gn.whisper, gn.name, gn.espeak) == ("gn", None, "Guarani", "gn") and not gn.has_token
    abc = resolve_language("abc")  # an ISO 639-3 language no table lists: no token, no proxy, no voice
    assert (abc.code, abc.whisper, abc.espeak) == ("abc", None, None)
    assert resolve_language("jv").code == "jw"  # Whisper's code for Javanese, under its ISO 639-1 code
    with pytest.raises(ConfigError, match=r"Whisper has no token for Guarani \(gn\)"):
        whisper_token("gn")


def test_relatives_are_symmetric():
    from whisper_lora.languages import relatives

    assert "sk" in relatives("cs") and "cs" in relatives("sk") and "ms" in relatives("id")
    assert all(code in relatives(r) for code in ("cs", "id", "eo", "nl") for r in relatives(code))
