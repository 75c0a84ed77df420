"""``whisper-lora convert``: a CTranslate2 (faster-whisper) checkpoint to a transformers one."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    c = sub.add_parser("convert", help="convert a CTranslate2 (faster-whisper) checkpoint to transformers")
    c.add_argument("src", nargs="+", help="directory (or directories holding model.bin.partN pieces)")
    c.add_argument("--out", required=True, help="transformers checkpoint directory to write")
    c.set_defaults(fn=run)


def run(a) -> int:
    from whisper_lora.base.ct2_import import convert_ct2_checkpoint

    print(f"wrote {convert_ct2_checkpoint([Path(p) for p in a.src], a.out)}")
    return 0
