"""Publishing: push an adapter directory to the Hugging Face hub, and use one with ``transformers.pipeline``.

``push_adapter`` uploads exactly the files a user needs (the PEFT pair, ``whisper_lora.json``, the model
card and the language profile when there is one) with ``huggingface_hub.upload_folder``, from a copy:

- the copy is taken under the adapter's lock (``atomic.target_lock``: one version, never half of a replacement),
  of regular files only: a symlink or anything else among them is refused, never followed;
- the copy is validated as an adapter, and its profile must read as a language profile, so a broken adapter
  (or any other file under a profile's name) is never published;
- its metadata, ``adapter_config.json`` and card are made public (``public_metadata``): the public base id, and
  no local path (the corpus, a local base, cache directories). The local directory is left as it is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from whisper_lora.atomic import target_lock
from whisper_lora.errors import AdapterError
from whisper_lora.languages import token_text
from whisper_lora.registry.adapter_io import (
    ADDED_TOKENS_FILE,
    METADATA_FILE,
    PEFT_FILES,
    load_adapter,
    validate_adapter,
)
from whisper_lora.registry.card import CARD_FILE, public_base_id, write_hub_files
from whisper_lora.registry.language_profile import PROFILE_FILE, read_profile_file
from whisper_lora.registry.metadata import AdapterMetadata

log = logging.getLogger("whisper_lora")
# the profile and the tokenizer's addition (an adapter with a new language token) when there are
UPLOADED = (*PEFT_FILES, METADATA_FILE, CARD_FILE, PROFILE_FILE, ADDED_TOKENS_FILE)
LOCAL = "<local>"  # what stands for the directories of a local path in published metadata
# a path that says where on this machine: absolute (POSIX or Windows), in a home directory, a file URL, or one that
# climbs out of the working directory; paths below it (``data/sw``) and hub ids (``openai/whisper-base``) are kept
_LOCAL_PATH = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\|file:)|(^|[\\/])\.\.([\\/]|$)")


def _public(value):
    """``value`` (JSON) with each local path replaced by ``<local>/<its last part>``."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and _LOCAL_PATH.search(value):
        last = re.split(r"[\\/]", value.rstrip("\\/"))[-1]
        return f"{LOCAL}/{last}" if last not in ("", "..", "~") else LOCAL
    return value


def public_metadata(meta: AdapterMetadata) -> AdapterMetadata:
    """``meta`` as it is published: a base given by a local path named by its public id where it has one
    (``public_base_id``), and every other local path (``data.source``, ``training.cache_dir``, a local base without
    a public id) as ``<local>/<its last part>``."""
    d = json.loads(meta.to_json())
    for record, key in ((d["base"], "name"), (d["training"], "base")):
        if isinstance(record.get(key), str) and _LOCAL_PATH.search(record[key]):
            record[key] = public_base_id(record[key])  # the offline conversion of whisper-base: openai/whisper-base
    return AdapterMetadata.from_dict(_public(d))


def _copy_regular(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``, refusing a symlink or anything but a regular file (checked on the file opened)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        if os.path.islink(src):
            raise AdapterError(
                f"{src} is a symlink (to {os.readlink(src)}); only regular files are published: copy the file in its place"
            ) from None
        raise AdapterError(f"cannot read {src}: {e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdapterError(f"{src} is not a regular file; only regular files are published")
        with open(fd, "rb", closefd=False) as f, open(dst, "wb") as out:
            shutil.copyfileobj(f, out)
    finally:
        os.close(fd)


def stage_for_upload(adapter_dir: str | Path, staging: str | Path) -> AdapterMetadata:
    """Fill ``staging`` with what ``push_adapter`` uploads (module docstring); returns the published metadata."""
    adapter_dir, staging = Path(adapter_dir), Path(staging)
    validate_adapter(adapter_dir)  # names what is wrong with the adapter itself first
    with target_lock(adapter_dir):
        for name in UPLOADED:
            if name != CARD_FILE and os.path.lexists(adapter_dir / name):  # the card is generated below
                _copy_regular(adapter_dir / name, staging / name)
    meta = validate_adapter(staging)  # what is uploaded is what was checked
    if (staging / PROFILE_FILE).exists():
        try:
            read_profile_file(staging / PROFILE_FILE)
        except AdapterError as e:
            raise AdapterError(f"{adapter_dir / PROFILE_FILE} is not a language profile: {e}") from None
    public = public_metadata(meta)
    config = json.loads((staging / PEFT_FILES[0]).read_text(encoding="utf-8"))
    (staging / PEFT_FILES[0]).write_text(json.dumps(_public(config)), encoding="utf-8")
    (staging / METADATA_FILE).write_text(public.to_json(), encoding="utf-8")
    write_hub_files(staging, public)  # the public base id in adapter_config.json, and the card
    return public


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload one adapter directory to the hub model repo ``repo_id`` (created if missing); returns the commit URL.

    ``token`` defaults to huggingface_hub's own (``HF_TOKEN`` or ``huggingface-cli login``).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:  # pragma: no cover - the hub extra
        raise AdapterError("pushing needs huggingface_hub: pip install 'whisper-lora[hub]'") from None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise AdapterError(f"invalid repo id {repo_id!r}: use <user or organisation>/<name>, e.g. me/whisper-base-sw")
    adapter_dir = Path(adapter_dir)
    with tempfile.TemporaryDirectory(prefix="whisper-lora-push-") as staging:
        meta = stage_for_upload(adapter_dir, staging)  # refuses a broken adapter before anything is uploaded
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=staging,
            allow_patterns=list(UPLOADED),
            revision=revision,
            commit_message=commit_message or f"whisper-lora adapter for {meta.language}",
        )
    url = getattr(info, "commit_url", None) or str(info)
    log.info("pushed %s to %s", adapter_dir, url)
    return url


def asr_pipeline(adapter_dir: str | Path, base: str | None = None, precision: str = "fp32", device: str = "auto"):
    """A ``transformers.pipeline("automatic-speech-recognition")`` with the adapter merged in and its
    language token forced (``ary`` decodes with ``ar``), ready to call on files or arrays."""
    from transformers import pipeline

    from whisper_lora.base.model import load_base_model

    meta = validate_adapter(adapter_dir)
    loaded = load_base_model(base or meta.base.get("name") or "whisper-base", precision, device)
    tokenizer = loaded.processor.tokenizer  # extended by an adapter that adds a language token
    model = load_adapter(loaded.model, adapter_dir, tokenizer=tokenizer).merge_and_unload().eval()
    return pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=tokenizer,
        feature_extractor=loaded.processor.feature_extractor,
        device=model.device,
        generate_kwargs={"language": token_text(meta.whisper_language), "task": "transcribe"},
    )
