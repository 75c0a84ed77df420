"""``serve`` and ``demo`` flags are generated from the serving configs: one flag per field, the field's comment its
help, and a command line gives back exactly the config it describes (or the config's one error)."""

import dataclasses

import pytest

from whisper_lora.cli import build_parser, main
from whisper_lora.cli.options import field_help, parse_languages
from whisper_lora.cli.serve import RAY_SKIP, SERVER_SKIP, demo_config, ray_config, server_config
from whisper_lora.errors import ConfigError
from whisper_lora.inference.decode import MAX_NEW_TOKENS
from whisper_lora.serving.config import DemoConfig, RayConfig, ServerConfig

# every field's flag and a value for it (the names docs/, bench/ and scripts use: they must keep working)
SERVER_FLAGS = {
    "max_upload_mb": ("--max-upload-mb", "2.5", 2.5),
    "max_audio_seconds": ("--max-audio-seconds", "40", 40.0),
    "max_sample_rate": ("--max-sample-rate", "48000", 48000),
    "max_channels": ("--max-channels", "2", 2),
    "max_batch": ("--max-batch", "3", 3),
    "max_wait_ms": ("--max-wait-ms", "7.5", 7.5),
    "max_queue": ("--max-queue", "5", 5),
    "max_connections": ("--max-connections", "9", 9),
    "request_timeout": ("--request-timeout", "0", None),  # 0: no limit
    "reload_seconds": ("--reload-seconds", "0", None),  # 0: never
    "api_keys": ("--api-key", "key-aaaa-1111", ("key-aaaa-1111",)),
    "cors_origins": ("--cors-origin", "https://app.example.org", ("https://app.example.org",)),
    "keep_alive_seconds": ("--keep-alive-seconds", "1.5", 1.5),
    "header_timeout_seconds": ("--header-timeout-seconds", "4", 4.0),
    "body_timeout_seconds": ("--body-timeout-seconds", "0", None),  # 0: no limit
    "body_min_rate": ("--body-min-rate", "1000", 1000.0),
    "max_open_connections": ("--max-open-connections", "64", 64),
}
RAY_FLAGS = {
    "address": ("--ray-address", "auto", "auto"),
    "replicas": ("--replicas", "1", 1),
    "min_replicas": ("--min-replicas", "1", 1),
    "max_replicas": ("--max-replicas", "3", 3),
    "target_ongoing_requests": ("--target-ongoing", "2.5", 2.5),
    "cpus_per_replica": ("--replica-cpus", "2", 2.0),
    "gpus_per_replica": ("--replica-gpus", "0.5", 0.5),
    "multiplex": ("--multiplex", "always", "always"),
    "max_loaded": ("--max-loaded", "3", 3),
    "registry_path": ("--ray-adapters", "/shared/adapters", "/shared/adapters"),
    "ship_adapters": ("--no-ship-adapters", None, False),
}


@pytest.fixture(autouse=True)
def _no_keys_in_env(monkeypatch):
    monkeypatch.delenv("WHISPER_LORA_API_KEY", raising=False)
    monkeypatch.delenv("WHISPER_LORA_DEMO_AUTH", raising=False)


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def _argv(flags: dict) -> list[str]:
    return [x for flag, text, _ in flags.values() for x in (flag, text) if x is not None]


def _squeezed(text: str) -> str:
    return "".join(text.split())  # help is wrapped at spaces and hyphens


@pytest.mark.parametrize(
    ("cls", "skip", "flags"), [(ServerConfig, SERVER_SKIP, SERVER_FLAGS), (RayConfig, RAY_SKIP, RAY_FLAGS)]
)
def test_every_field_is_a_serve_flag_with_its_comment_as_help(cls, skip, flags, capsys):
    assert set(flags) == {f.name for f in dataclasses.fields(cls)} - set(skip)
    with pytest.raises(SystemExit):
        _parse("serve", "--help")
    shown = _squeezed(capsys.readouterr().out)
    docs = field_help(cls)
    for name, (flag, _, _) in flags.items():
        assert _squeezed(docs[name]) in shown, name
        assert flag.replace("--no-", "--") in shown, flag
    for name in skip:  # internal: no flag
        assert f"--{name.replace('_', '-')}" not in shown


def test_a_command_line_gives_back_the_configs_it_describes():
    a = _parse("serve", "--ray", *_argv(SERVER_FLAGS), "--api-key", "key-bbbb-2222", *_argv(RAY_FLAGS))
    want = {k: v for k, (_, _, v) in SERVER_FLAGS.items()} | {"api_keys": ("key-aaaa-1111", "key-bbbb-2222")}
    assert server_config(a) == ServerConfig(**want)
    assert ray_config(a) == RayConfig(**{k: v for k, (_, _, v) in RAY_FLAGS.items()})
    assert ray_config(_parse("serve", "--ship-adapters")).ship_adapters is True


def test_the_default_command_line_gives_the_config_defaults(monkeypatch):
    a = _parse("serve")
    assert server_config(a) == ServerConfig() and ray_config(a) == RayConfig()
    assert (a.beams, a.max_new_tokens) == (1, MAX_NEW_TOKENS)
    d = _parse("demo")
    assert demo_config(d) == DemoConfig() and d.max_new_tokens == MAX_NEW_TOKENS and not hasattr(d, "beams")
    monkeypatch.setenv("WHISPER_LORA_API_KEY", "key-aaaa-1111,key-bbbb-2222")
    assert server_config(a).api_keys == ("key-aaaa-1111", "key-bbbb-2222")  # no --api-key: the environment's
    assert server_config(_parse("serve", "--api-key", "key-cccc-3333")).api_keys == ("key-cccc-3333",)


def test_demo_flags():
    d = _parse("demo", "--max-upload-mb", "0.5", "--auth", "ana:correct-horse", "--max-new-tokens", "8")
    assert demo_config(d) == DemoConfig((("ana", "correct-horse"),), max_upload_mb=0.5) and d.max_new_tokens == 8
    assert demo_config(_parse("demo", "--max-audio-seconds", "60")).audio_limits.max_seconds == 60.0
    assert demo_config(_parse("demo", "--max-audio-seconds", "0")).max_audio_seconds is None  # 0: no limit


def test_bad_values_give_the_configs_error_listing_every_problem(capsys):
    bad = ("--max-upload-mb", "0", "--max-batch", "0", "--request-timeout", "-1", "--api-key", "short")
    with pytest.raises(ConfigError) as e:
        server_config(_parse("serve", *bad))
    for problem in ("max_upload_mb=0.0", "max_batch=0", "request_timeout=-1.0", "at least 8 characters"):
        assert problem in str(e.value), problem
    bad_ray = ("--replicas", "0", "--max-loaded", "0", "--replica-cpus", "0", "--min-replicas", "2")
    with pytest.raises(ConfigError) as e:
        ray_config(_parse("serve", "--ray", *bad_ray))
    for problem in ("replicas=0", "max_loaded=0", "cpus_per_replica=0.0", "both min_replicas and max_replicas"):
        assert problem in str(e.value), problem
    assert main(["serve", *bad]) == 2  # before any model loads
    assert "max_batch=0" in capsys.readouterr().err


def test_parse_languages():
    assert parse_languages("sw, cs,,en ") == ("sw", "cs", "en")
    assert parse_languages(None) is None and parse_languages("") is None
