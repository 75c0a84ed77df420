"""Library use prints no third-party deprecation warnings: training, transcription (short, long-form,
timestamps, mixed-language batch) and evaluation, checked in a fresh process so that transformers'
once-only warnings are not hidden by earlier tests."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys, warnings
    from pathlib import Path

    import numpy as np

    from tests.conftest import LIBRIVOX, tiny_train_config
    from whisper_lora.data.audio import load_audio
    from whisper_lora.inference.transcriber import Transcriber
    from whisper_lora.training.train import train_adapter

    seen = []  # from here on: library use, not imports

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(f"log {record.name}: {record.getMessage()}")

    for name in ("transformers", "peft", "accelerate", "bitsandbytes", "huggingface_hub", "torch"):
        logging.getLogger(name).addHandler(Catch(level=logging.WARNING))
    warnings.simplefilter("always")
    _show = warnings.showwarning
    warnings.showwarning = lambda m, c, f, l, *a, **k: seen.append(f"warning {c.__name__} {f}:{l}: {m}")


    tiny, corpus, work = map(Path, sys.argv[1:4])
    cfg = tiny_train_config(tiny, corpus, work / "runs" / "sw", max_steps=2, checkpoint_every=1, eval_every=1)
    result = train_adapter(cfg, progress=False)
    t = Transcriber(str(tiny), work / "runs", precision="fp32", device="cpu", max_new_tokens=8)
    clip = load_audio(sorted(LIBRIVOX.glob("*.wav"))[0])
    t.transcribe_batch([clip, clip], ["sw", "en"])
    t.transcribe(clip, "sw", timestamps=True)
    t.transcribe(np.concatenate([clip] * 6), "sw")
    t.transcribe(clip, "auto")
    print(json.dumps([s for s in seen if "whisper_lora" not in s.split(":")[0]]))
    """
)


def test_library_use_emits_no_third_party_warnings(tiny_dir, sw_corpus, tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_dir), str(sw_corpus), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert found == [], "\n".join(found)
