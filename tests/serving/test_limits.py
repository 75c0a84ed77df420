"""Limits, keys and server settings as units (the real-process behaviour is in test_server_limits.py)."""

import pytest

from whisper_lora.errors import ConfigError
from whisper_lora.serving.config import DemoConfig
from whisper_lora.serving.limits import api_key_ok, public
from whisper_lora.serving.server import ServerConfig, upload_suffix


def test_public_messages_keep_names_and_drop_directories():
    msg = "adapter 'cs' is broken: /srv/whisper/adapters/cs/whisper_lora.json is malformed (see /var/log/x.log)"
    assert public(msg) == "adapter 'cs' is broken: whisper_lora.json is malformed (see x.log)"
    assert public("no adapter 'de' in /srv/reg/; available: cs") == "no adapter 'de' in <path>; available: cs"
    assert public("ratio 3/4 and http://host/a/b stay") == "ratio 3/4 and http://host/a/b stay"


@pytest.mark.parametrize(
    "header, ok",
    [
        ("Bearer key-aaaa-1111", True),
        ("bearer key-bbbb-2222", True),
        ("Bearer key-aaaa-111", False),
        ("Basic key-aaaa-1111", False),
        ("Bearer ", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_keys(header, ok):
    assert api_key_ok(header, ["key-aaaa-1111", "key-bbbb-2222"]) is ok


def test_server_config_names_every_bad_value(monkeypatch):
    with pytest.raises(ConfigError) as e:
        ServerConfig(max_queue=0, request_timeout=-1, max_audio_seconds=0, api_keys=("short",))
    text = str(e.value)
    assert "max_queue=0 must be >= 1" in text and "request_timeout=-1" in text and "max_audio_seconds=0" in text
    assert "at least 8 characters" in text
    monkeypatch.setenv("WHISPER_LORA_API_KEY", " key-aaaa-1111 ,key-bbbb-2222,")
    assert ServerConfig.keys_from_env() == ("key-aaaa-1111", "key-bbbb-2222")
    cfg = ServerConfig(api_keys=ServerConfig.keys_from_env())
    assert "key-aaaa" not in repr(cfg) and cfg.public()["auth"] is True and "api_keys" not in cfg.public()


def test_upload_suffixes_are_short_and_plain():
    assert upload_suffix("a.flac") == ".flac"
    assert upload_suffix("a." + "x" * 300) == ".bin"
    assert upload_suffix("../../etc/passwd") == ".bin"
    assert upload_suffix("x.w/av") == ".bin"


def test_demo_config(monkeypatch):
    cfg = DemoConfig(DemoConfig.logins(["ana:correct-horse"]), max_upload_mb=5)
    assert cfg.launch_kwargs() == {"max_file_size": 5 * 2**20, "auth": [("ana", "correct-horse")]}
    assert "correct-horse" not in repr(cfg)
    monkeypatch.setenv("WHISPER_LORA_DEMO_AUTH", "a:password1,b:password2")
    assert [u for u, _ in DemoConfig.logins(None)] == ["a", "b"]
    monkeypatch.delenv("WHISPER_LORA_DEMO_AUTH")
    assert "auth" not in DemoConfig(DemoConfig.logins(None)).launch_kwargs()
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        DemoConfig.logins(["nopassword"])
    with pytest.raises(ConfigError, match="8\\+ characters"):
        DemoConfig(DemoConfig.logins(["ana:short"]))
