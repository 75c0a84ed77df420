"""The gradio demo in headless Chromium (Debian's chromium, driven by playwright): upload, read the page."""

import os
import shutil

import pytest

from tests.conftest import LIBRIVOX
from whisper_lora.serving.process import running

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLIP = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"


@pytest.fixture(scope="module")
def demo(tiny_dir, tiny_registry):
    args = [
        "demo",
        "--base",
        str(tiny_dir),
        "--adapters",
        str(tiny_registry),
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
    ]
    with running(args, ready_path="/", timeout=240, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}) as url:
        yield url


def test_upload_and_read_transcripts(demo, tiny_dir, tiny_registry):
    from playwright.sync_api import sync_playwright

    from whisper_lora.inference.transcriber import Transcriber

    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    expected_adapter = t.transcribe(str(CLIP), "sw").text
    expected_base = t.transcribe(str(CLIP), "sw", adapter=None).text
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page()
        page.goto(demo, wait_until="networkidle")
        page.locator("#audio input[type=file]").set_input_files(str(CLIP))
        page.locator("#language input").fill("sw")
        page.keyboard.press("Enter")
        page.locator("#transcribe").click()
        details = page.locator("#details textarea")
        details.wait_for(state="visible")
        page.wait_for_function("document.querySelector('#details textarea').value.includes('adapter:')", timeout=60000)
        assert "adapter: sw" in details.input_value()
        assert page.locator("#adapter-text textarea").input_value() == expected_adapter
        assert page.locator("#base-text textarea").input_value() == expected_base
        browser.close()


def test_auth_and_upload_limit(tiny_dir, tiny_registry):
    import httpx

    args = ["demo", "--base", str(tiny_dir), "--adapters", str(tiny_registry), "--precision", "fp32"]
    args += ["--device", "cpu", "--max-new-tokens", "8", "--max-upload-mb", "0.5"]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "WHISPER_LORA_DEMO_AUTH": "ana:correct-horse"}
    with running(args, ready_path="/", timeout=240, env=env) as url:
        assert httpx.get(f"{url}/config").status_code == 401  # nothing but the login page without a login
        small = {"files": ("clip.wav", CLIP.read_bytes()[:100_000])}
        assert httpx.post(f"{url}/gradio_api/upload", files=small).status_code == 401
        with httpx.Client(base_url=url) as client:
            bad = client.post("/login", data={"username": "ana", "password": "wrong-horse"})
            assert bad.status_code == 400 and client.get("/config").status_code == 401
            assert client.post("/login", data={"username": "ana", "password": "correct-horse"}).status_code == 200
            assert client.get("/config").status_code == 200
            assert client.post("/gradio_api/upload", files=small).status_code == 200
            big = {"files": ("big.wav", b"\0" * (2**20))}  # over --max-upload-mb 0.5
            assert client.post("/gradio_api/upload", files=big).status_code == 413


def test_the_demo_decodes_once_within_its_limits(tiny_dir, tiny_registry, tmp_path):
    from tests.data.test_audio_limits import silent_flac
    from whisper_lora.data.audio import AudioLimits
    from whisper_lora.inference.transcriber import Transcriber
    from whisper_lora.serving.config import DemoConfig
    from whisper_lora.serving.demo import run_demo_request

    t = Transcriber(str(tiny_dir), tiny_registry, precision="fp32", device="cpu", max_new_tokens=8)
    assert DemoConfig().audio_limits == AudioLimits(max_seconds=1800)  # the server's default
    adapted, base, details = run_demo_request(t, str(CLIP), "sw", AudioLimits(max_seconds=1))
    assert (adapted, base) == ("", "") and "3.0 s long; accepted: at most 1 s" in details
    bomb = tmp_path / "bomb.flac"  # 60 s at 655,350 Hz x 8: 1.26 GB as float32, refused from its header
    bomb.write_bytes(silent_flac(655_350, 8, 60))
    assert "655350 Hz; accepted: at most 192000 Hz" in run_demo_request(t, str(bomb), "sw")[2]
    adapted, base, details = run_demo_request(t, str(CLIP), "sw")
    assert adapted == t.transcribe(str(CLIP), "sw").text and "adapter: sw" in details
