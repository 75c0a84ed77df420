import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import LIBRIVOX
from whisper_lora.base.ct2_import import convert_ct2_checkpoint, read_ct2_variables
from whisper_lora.base.resolve import shipped_ct2_dirs
from whisper_lora.errors import ConversionError
from whisper_lora.inference.scoring import normalizer_for

CLIPS = ["0870", "0880", "0930"]


def _features(processor, clip):
    audio, sr = sf.read(LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{clip}.wav", dtype="float32")
    assert sr == 16000
    return processor(audio, sampling_rate=sr, return_tensors="pt").input_features


@pytest.fixture(scope="module")
def base(base_dir):
    from whisper_lora.base.model import load_base_model

    loaded = load_base_model(str(base_dir), "fp32", "cpu")
    return loaded.model, loaded.processor


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS)
def test_real_recording_transcribes_correctly(base, clip):
    model, processor = base
    ids = model.generate(_features(processor, clip), language="en", task="transcribe")
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    ref = (LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{clip}.txt").read_text()
    norm = normalizer_for("en")
    # the LibriVox reference spells "mister" and "ill disposed"; the normaliser unifies both
    assert norm(text).replace("-", " ") == norm(ref).replace("-", " ")


@pytest.mark.slow
def test_greedy_tokens_identical_to_ctranslate2(base, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")  # optional runtime: the [ct2] extra installs it
    model, processor = base
    dirs = shipped_ct2_dirs("whisper-base")
    ct2_dir = tmp_path / "ct2"
    ct2_dir.mkdir()
    for f in (f for d in dirs for f in d.iterdir() if not f.name.startswith("model.bin")):
        (ct2_dir / f.name).write_bytes(f.read_bytes())  # config, tokenizer, vocabulary
    with open(ct2_dir / "model.bin", "wb") as out:
        for part in sorted((p for d in dirs for p in d.glob("model.bin.part*")), key=lambda p: p.suffix):
            out.write(part.read_bytes())
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    for clip in CLIPS:
        feats = _features(processor, clip)
        ours = model.generate(feats, language="en", task="transcribe")[0].tolist()
        theirs = ct2.generate(ctranslate2.StorageView.from_array(feats.numpy()), [prompt], beam_size=1)[0]
        eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        assert [t for t in ours if t < eot] == theirs.sequences_ids[0]


def test_int8_checkpoint_is_dequantised(tiny_dir, tmp_path):
    """A user's own int8 faster-whisper model: convert with CTranslate2's converter, import it back."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperForConditionalGeneration

    ct2_dir = tmp_path / "ct2-int8"
    ctranslate2.converters.TransformersConverter(str(tiny_dir)).convert(str(ct2_dir), quantization="int8")
    (ct2_dir / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    variables, _ = read_ct2_variables(ct2_dir / "model.bin")
    assert variables["encoder/layer_0/self_attention/linear_0/weight"].dtype == np.int8
    out = convert_ct2_checkpoint(ct2_dir, tmp_path / "imported")
    ref = WhisperForConditionalGeneration.from_pretrained(tiny_dir).state_dict()
    got = WhisperForConditionalGeneration.from_pretrained(out).state_dict()
    for name in ("model.encoder.layers.0.self_attn.k_proj.weight", "model.decoder.layers.1.encoder_attn.v_proj.weight"):
        err = (got[name] - ref[name]).abs().max() / ref[name].abs().max()
        assert err < 0.01, name  # int8 rounding, not garbage
    assert torch.equal(got["proj_out.weight"], got["model.decoder.embed_tokens.weight"])  # tied output restored


def _write_ct2(path, version=6, truncate=0):
    def s(x):
        b = x.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    data = struct.pack("<I", version) + s("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", 1)
    data += s("x") + struct.pack("<B", 1) + struct.pack("<I", 4) + struct.pack("<B", 0) + struct.pack("<I", 16)
    data += np.arange(4, dtype=np.float32).tobytes() + struct.pack("<I", 0)
    path.write_bytes(data[: len(data) - truncate] if truncate else data)


def test_parser_reads_split_files_and_rejects_bad_ones(tmp_path):
    _write_ct2(tmp_path / "model.bin")
    whole = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "a").write_bytes(whole[:20])
    (tmp_path / "b").write_bytes(whole[20:])
    v, spec = read_ct2_variables([tmp_path / "a", tmp_path / "b"])
    assert spec == "WhisperSpec" and v["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    _write_ct2(tmp_path / "old.bin", version=2)
    with pytest.raises(ConversionError, match="unsupported CTranslate2 binary version 2"):
        read_ct2_variables(tmp_path / "old.bin")
    _write_ct2(tmp_path / "cut.bin", truncate=10)
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2_variables(tmp_path / "cut.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="no model.bin"):
        convert_ct2_checkpoint(tmp_path / "empty", tmp_path / "out")
