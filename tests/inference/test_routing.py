"""The router's decisions on controlled evidence, and the language-profile file format."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from whisper_lora.errors import AdapterError
from whisper_lora.inference.language_id import LanguageEvidence
from whisper_lora.inference.routing import ABSTAINED, ROUTER, WHISPER_LID, Router
from whisper_lora.registry.language_profile import PROFILE_FILE, LanguageProfile, read_profile, write_profile

LANGS = ("en", "de", "sw", "cs", "ja", "th", "pl", "fr")
D = 16
FP = "f00d"
rng = np.random.default_rng(0)
CENTRES = {lang: rng.normal(size=D) * 3 for lang in ("sw", "cs", "fr", "en")}
CENTRES["mid"] = (CENTRES["sw"] + CENTRES["fr"]) / 2  # as much Swahili as French


def evidence(centre: str, n: int, lid: str, p: float = 0.6) -> LanguageEvidence:
    """``n`` inputs whose encoder states cluster at a language's centre and that Whisper calls ``lid``."""
    h = CENTRES[centre] + rng.normal(size=(n, D))
    probs = np.full((n, len(LANGS)), (1 - p) / (len(LANGS) - 1))
    probs[:, LANGS.index(lid)] = p
    return LanguageEvidence(LANGS, np.log(probs).astype(np.float32), h.astype(np.float32))


def profile(ev: LanguageEvidence, base=FP, row_languages=None) -> LanguageProfile:
    return LanguageProfile(ev.languages, ev.logprobs, ev.encoder_mean, base, "int8", row_languages)


def adapter(tmp_path, name, whisper=None, with_profile=None):
    path = tmp_path / name
    path.mkdir()
    if with_profile is not None:
        write_profile(path, with_profile)
    return SimpleNamespace(
        name=name, language=name, whisper_language=whisper or name, detected_as=whisper or name, path=path
    )


@pytest.fixture
def background():
    fr, en = evidence("fr", 40, "fr"), evidence("en", 40, "en", 0.9)
    return LanguageProfile(
        LANGS,
        np.concatenate([fr.logprobs, en.logprobs]),
        np.concatenate([fr.encoder_mean, en.encoder_mean]),
        FP,
        "int8",
        ("fr",) * 40 + ("en",) * 40,
    )


def test_router_sends_adapter_languages_to_their_adapters_where_whisper_lid_fails(tmp_path, background):
    # Whisper calls the Swahili clips Japanese and the Czech ones Polish: its language ID alone misses both
    sw = adapter(tmp_path, "sw", with_profile=profile(evidence("sw", 60, "ja")))
    cs = adapter(tmp_path, "cs", with_profile=profile(evidence("cs", 60, "pl")))
    router = Router([sw, cs], FP, LANGS, background=background)
    assert [d.adapter for d in router.route(evidence("sw", 20, "th"))] == ["sw"] * 20
    decisions = router.route(evidence("cs", 20, "pl"))
    assert [d.adapter for d in decisions] == ["cs"] * 20 and {d.route for d in decisions} == {ROUTER}
    assert all(d.language == "cs" and d.probability >= 0.5 for d in decisions)
    assert router.describe()["adapters"] == {"sw": {"route": ROUTER}, "cs": {"route": ROUTER}}


def test_router_abstains_for_languages_without_an_adapter(tmp_path, background):
    sw = adapter(tmp_path, "sw", with_profile=profile(evidence("sw", 60, "ja")))
    router = Router([sw], FP, LANGS, background=background)
    decisions = router.route(evidence("en", 10, "en", 0.9))
    assert [(d.adapter, d.language, d.route) for d in decisions] == [(None, "en", ROUTER)] * 10
    # half Swahili, half French: no class is sure enough, so the base decodes, in Whisper's best guess
    unsure = router.route(evidence("mid", 10, "de", 0.3), threshold=0.95)
    assert [(d.adapter, d.language, d.route) for d in unsure] == [(None, "de", ABSTAINED)] * 10
    # Whisper's probability for the language named, among the languages without a profile (sw had 0.1)
    assert all(d.probability == pytest.approx(0.3 / (1 - 0.1), abs=1e-4) for d in unsure)


def test_candidates_restrict_classes_and_whisper_guesses(tmp_path, background):
    sw = adapter(tmp_path, "sw", with_profile=profile(evidence("sw", 60, "ja")))
    cs = adapter(tmp_path, "cs", with_profile=profile(evidence("cs", 60, "pl")))
    only_sw = Router([sw, cs], FP, LANGS, candidates=["sw", "en"], background=background)
    assert [e.name for e in only_sw.classes] == ["sw"]
    # a French input in a deployment of sw and en: Whisper's guess is kept within the candidates
    assert {d.language for d in only_sw.route(evidence("fr", 5, "fr")) if d.adapter is None} <= {"en"}
    # every candidate has an adapter: no "other" class, every input goes to one of them
    both = Router([sw, cs], FP, LANGS, candidates=["sw", "cs"], background=background)
    assert {d.adapter for d in both.route(evidence("en", 10, "en", 0.9))} <= {"sw", "cs"}


def test_adapters_without_profiles_fall_back_to_whisper_lid_with_a_reason(tmp_path, background, caplog):
    sw = adapter(tmp_path, "sw", with_profile=profile(evidence("sw", 60, "ja")))
    ja = adapter(tmp_path, "ja")  # trained before profiles existed
    other_base = adapter(tmp_path, "th", with_profile=profile(evidence("sw", 10, "th"), base="beef"))
    with caplog.at_level(logging.WARNING, logger="whisper_lora"):
        router = Router([sw, ja, other_base], FP, LANGS, background=background)
    desc = router.describe()["adapters"]
    assert desc["sw"] == {"route": ROUTER}
    assert desc["ja"]["route"] == WHISPER_LID and "no language profile" in desc["ja"]["reason"]
    assert desc["th"]["route"] == WHISPER_LID and "another base (beef)" in desc["th"]["reason"]
    assert "adapter ja" in caplog.text
    # Whisper names Japanese confidently for a clip the router does not claim: the ja adapter decodes it
    d = router.route(evidence("en", 1, "ja", 0.9))[0]
    assert (d.adapter, d.route) == ("ja", WHISPER_LID)
    d = router.route(evidence("en", 1, "ja", 0.3))[0]  # unsure: the base
    assert d.adapter is None


def test_without_a_background_profiles_are_not_trusted_alone(tmp_path):
    sw = adapter(tmp_path, "sw", with_profile=profile(evidence("sw", 60, "ja")))
    router = Router([sw], FP, LANGS, background=None)
    assert router.describe()["adapters"]["sw"]["route"] == WHISPER_LID
    assert "no routing background" in router.describe()["adapters"]["sw"]["reason"]
    d = router.route(evidence("sw", 1, "sw", 0.9))[0]
    assert (d.adapter, d.route) == ("sw", WHISPER_LID)
    assert router.route(evidence("sw", 1, "ja", 0.9))[0].adapter is None


def test_background_rows_of_an_adapter_language_are_dropped(tmp_path, background):
    fr = adapter(tmp_path, "fr", with_profile=profile(evidence("fr", 60, "fr")))
    router = Router([fr], FP, LANGS, background=background)
    # with the French background rows kept, French would be its own "other"
    assert {d.adapter for d in router.route(evidence("fr", 10, "fr"))} == {"fr"}


def test_profile_file_round_trips_and_refuses_damage(tmp_path):
    ev = evidence("sw", 7, "ja")
    write_profile(tmp_path, profile(ev, row_languages=("sw",) * 7))
    back = read_profile(tmp_path)
    assert back.languages == LANGS and back.base_fingerprint == FP and back.precision == "int8"
    assert back.row_languages == ("sw",) * 7
    assert np.allclose(back.logprobs, ev.logprobs, atol=1e-2) and np.allclose(
        back.encoder_mean, ev.encoder_mean, atol=1e-2
    )
    assert (tmp_path / PROFILE_FILE).stat().st_size < 2000
    assert read_profile(tmp_path / "missing") is None
    data = (tmp_path / PROFILE_FILE).read_bytes()
    (tmp_path / PROFILE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="damaged"):
        read_profile(tmp_path)
    with pytest.raises(AdapterError, match="log-probabilities"):
        LanguageProfile(LANGS, np.ones((2, len(LANGS))), np.zeros((2, D)))


def test_cli_states_the_default_threshold():
    import argparse

    from whisper_lora.cli.options import add_routing
    from whisper_lora.inference.routing import DEFAULT_THRESHOLD

    p = argparse.ArgumentParser()
    add_routing(p)
    help_text = next(a.help for a in p._actions if a.dest == "threshold")
    assert f"default {DEFAULT_THRESHOLD}," in help_text and p.parse_args([]).threshold is None


def test_close_relatives_in_the_background_are_hard_negatives(tmp_path, monkeypatch):
    """Slovak speech without an adapter sits next to Czech: as a class of its own (counted as ``other`` when routing),
    more of it goes to the base than when it is a few utterances among the background's (``HARD_CLASSES`` off)."""
    import whisper_lora.inference.routing as routing

    local = np.random.default_rng(5)

    def ev(centre, n, lid, p=0.6):
        probs = np.full((n, len(LANGS)), (1 - p) / (len(LANGS) - 1))
        probs[:, LANGS.index(lid)] = p
        return LanguageEvidence(
            LANGS, np.log(probs).astype(np.float32), (centre + local.normal(size=(n, D))).astype(np.float32)
        )

    sk_centre = CENTRES["cs"] + local.normal(size=D) * 0.8
    cs = adapter(tmp_path, "cs", with_profile=profile(ev(CENTRES["cs"], 60, "pl")))
    parts = [ev(CENTRES["fr"], 40, "fr"), ev(CENTRES["en"], 40, "en", 0.9), ev(sk_centre, 8, "pl")]
    rows = ("fr",) * 40 + ("en",) * 40 + ("sk",) * 8
    bg = profile(LanguageEvidence.concat(parts), row_languages=rows)
    held_out = ev(sk_centre, 50, "pl")
    to_base, czech = {}, ev(CENTRES["cs"], 50, "pl")
    for classes in (False, True):
        monkeypatch.setattr(routing, "HARD_CLASSES", classes)
        router = Router([cs], FP, LANGS, background=bg)
        assert router.hard_negatives == {"cs": ["sk"]}
        assert router.describe()["adapters"]["cs"]["hard_negatives"] == ["sk"]
        to_base[classes] = sum(d.adapter is None for d in router.route(held_out))
        assert sum(d.adapter == "cs" for d in router.route(czech)) >= 40  # Czech still reaches its adapter
    assert to_base[True] > to_base[False] + 10, to_base
