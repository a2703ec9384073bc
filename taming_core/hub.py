"""Pretrained pipelines: local directories, the Hugging Face Hub, original checkpoint files.

``Pipeline.from_pretrained(ref)``, ``Tokenizer.from_pretrained(ref)`` and
``Prior.from_pretrained(ref)`` accept:

* a local directory written by ``Pipeline.save``/``save_pretrained`` (``pipeline.json`` +
  ``pipeline.safetensors``);
* a Hub repo in that format: ``"owner/name"``, ``"owner/name@revision"`` or
  ``"hf://owner/name@revision"`` (``revision=`` works too);
* an original checkpoint file, local or on the Hub: ``"hf://owner/name[@revision]/path/file"``
  (or ``filename=``), e.g. ``hf://FoundationVision/LlamaGen/c2i_B_256.pt``. Files are read
  by the registered ``checkpoint_format`` components (:class:`~taming_core.CheckpointFormat`;
  the built-in ``original`` format in ``taming_plugins.compat`` reads taming ``.ckpt`` and
  LlamaGen ``.pt`` files), so the core imports no reader. A prior-only file needs
  ``tokenizer=`` (another reference), and ``config=`` passes the format's own config
  (an original YAML, or a LlamaGen preset name / ``ModelArgs`` mapping).

Downloads go through ``huggingface_hub`` (the optional extra ``taming[hub]``) into the
standard Hugging Face cache (``HF_HUB_CACHE``/``HF_HOME``, or ``cache_dir=``).
``HF_HUB_OFFLINE=1`` (read at every call) makes every look-up local: a file missing
from the cache is an error that says so.

``save_pretrained(dir)`` writes the pipeline and a model card ``README.md`` (YAML front
matter with ``library_name``, ``license``, ``datasets``, ``tags``; the config, training
data and metrics when known). ``push_to_hub(repo_id)`` uploads that directory.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import CheckpointError, ConfigError, ValidationError
from .io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline

HUB_SCHEME = "hf://"
CARD_FILE = "README.md"
OFFLINE_ENV = "HF_HUB_OFFLINE"
LIBRARY_NAME = "taming"
#: ``owner/name`` with an optional ``@revision``: how a Hub repo is written.
_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_REF = re.compile(rf"^({_REPO})(?:@([^/]+))?$")
_HUB_REF = re.compile(rf"^({_REPO})(?:@([^/]+))?(?:/(.+))?$")
CARD_KEYS = ("license", "datasets", "metrics", "source", "description", "tags", "title")


@dataclass(frozen=True)
class HubRef:
    """A Hub repo (and optionally a file in it) at a revision (None = ``main``)."""

    repo_id: str
    revision: Optional[str] = None
    filename: Optional[str] = None

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HUB_SCHEME}{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def parse_ref(ref: Union[str, os.PathLike], *, revision: Optional[str] = None,
              filename: Optional[str] = None) -> Union[Path, HubRef]:
    """A local path (when it exists, or is not written like a Hub reference) or a :class:`HubRef`."""
    if not isinstance(ref, (str, os.PathLike)):
        raise ValidationError(f"from_pretrained(ref): expected a path or a Hub reference string, got "
                              f"{type(ref).__name__}")
    text = os.fspath(ref)
    if text.startswith(HUB_SCHEME):
        m = _HUB_REF.match(text[len(HUB_SCHEME):])
        if m is None:
            raise ValidationError(f"from_pretrained(ref): {text!r} is not hf://owner/name[@revision][/file]")
        rev, file = m.group(2), m.group(3)
    else:
        if Path(text).expanduser().exists():
            return Path(text).expanduser()
        m = _REPO_REF.match(text)
        if m is None:
            raise CheckpointError(f"{text}: not a saved pipeline, an original file or a Hub reference "
                                  f"(no such path; Hub references are owner/name[@revision] or "
                                  f"{HUB_SCHEME}owner/name[@revision]/file)")
        rev, file = m.group(2), None
    if revision is not None and rev is not None and revision != rev:
        raise ValidationError(f"from_pretrained: {text!r} names revision {rev!r} but revision={revision!r}")
    if filename is not None and file is not None and filename != file:
        raise ValidationError(f"from_pretrained: {text!r} names file {file!r} but filename={filename!r}")
    return HubRef(m.group(1), revision or rev, filename or file)


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("the Hugging Face Hub needs the optional dependency huggingface_hub: "
                          "pip install 'taming[hub]'") from None
    return huggingface_hub


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set now (or was when huggingface_hub was imported)."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir(cache_dir: Optional[Union[str, os.PathLike]]) -> Optional[str]:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    return os.environ.get("HF_HUB_CACHE") or None  # read now: the client reads it at import


def download(ref: HubRef, *, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The local path of a Hub file (``ref.filename``) or of a repo snapshot in our format."""
    hub = _hub()
    from .pipeline import CONFIG_FILE, WEIGHTS_FILE

    kwargs = dict(repo_id=ref.repo_id, revision=ref.revision, cache_dir=_cache_dir(cache_dir),
                  local_files_only=offline())
    try:
        if ref.filename is not None:
            return Path(hub.hf_hub_download(filename=ref.filename, **kwargs))
        return Path(hub.snapshot_download(allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE], **kwargs))
    except Exception as exc:  # noqa: BLE001 - every client error becomes one line
        reason = " ".join(str(exc).split()) or type(exc).__name__
        where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline() else "on the Hub"
        raise CheckpointError(f"{ref}: could not get it {where}: {type(exc).__name__}: "
                              f"{reason[:300]}") from None


def resolve(ref: Union[str, os.PathLike], *, revision: Optional[str] = None,
            filename: Optional[str] = None,
            cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """A reference (see module doc) -> a local file or directory."""
    parsed = parse_ref(ref, revision=revision, filename=filename)
    if isinstance(parsed, Path):
        if filename is not None:
            parsed = parsed / filename
        if not parsed.exists():
            raise CheckpointError(f"{parsed}: no such file or directory")
        return parsed
    return download(parsed, cache_dir=cache_dir)


def _is_saved_pipeline(path: Path) -> bool:
    from .pipeline import CONFIG_FILE

    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_card(directory: Path) -> dict[str, Any]:
    """The YAML front matter of ``directory/README.md`` (empty when there is none)."""
    card = directory / CARD_FILE
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    if m is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def load_parts(path: Path, config: Any = None) -> dict[str, Any]:
    """Pipeline parts of a local original file (or a directory in another format, such as
    ``taming convert``'s), read by the first registered ``checkpoint_format`` that accepts it."""
    from .interfaces import CheckpointFormat
    from .registry import available, create

    names = available("checkpoint_format")
    for name in names:
        fmt = create("checkpoint_format", name)
        if isinstance(fmt, CheckpointFormat) and fmt.accepts(path):
            parts = dict(fmt.load_parts(path, config=config))
            parts.setdefault("card", {})
            return parts
    raise CheckpointError(f"{path}: neither a saved pipeline directory nor a file any registered "
                          f"checkpoint format reads (formats: {', '.join(names) or 'none'})")


def _pipeline_parts(ref: Any, config: Any, revision: Optional[str], filename: Optional[str],
                    cache_dir: Any, map_location: Any,
                    verify: bool = True) -> tuple[Optional["Pipeline"], dict[str, Any]]:
    path = resolve(ref, revision=revision, filename=filename, cache_dir=cache_dir)
    if isinstance(config, str) and config.startswith(HUB_SCHEME):  # e.g. a taming YAML on the Hub
        config = resolve(config, cache_dir=cache_dir)
    if _is_saved_pipeline(path):
        from .pipeline import Pipeline

        pipe = Pipeline.load(path, map_location=map_location, verify=verify)
        pipe.card_info = read_card(path)
        return pipe, {}
    return None, load_parts(path, config)  # a file, or a directory another format reads


def load_pipeline(cls: type, ref: Any, *, tokenizer: Any = None, config: Any = None,
                  tokenizer_config: Any = None, revision: Optional[str] = None,
                  filename: Optional[str] = None, cache_dir: Any = None,
                  map_location: Any = "cpu", verify: bool = True) -> "Pipeline":
    """``Pipeline.from_pretrained``: see the module doc.

    Args:
        ref: the pipeline or the (prior or tokenizer) file.
        tokenizer: a reference to the tokenizer when ``ref`` is a prior-only file (LlamaGen
            ``c2i_*.pt`` needs ``hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt``).
        config, tokenizer_config: the formats' own configs for ``ref`` / ``tokenizer``.
        revision, filename: alternatives to writing them into ``ref``.
        cache_dir: Hugging Face cache directory (default: the standard cache).
        map_location: device of the loaded pipeline.
        verify: check a saved pipeline's recorded SHA-256 sums (``Pipeline.load``); False
            skips hashing huge weight files.
    """
    pipe, parts = _pipeline_parts(ref, config, revision, filename, cache_dir, map_location, verify)
    if pipe is not None:
        if tokenizer is not None or config is not None:
            raise ValidationError("from_pretrained: a saved pipeline brings its own tokenizer and "
                                  "config; tokenizer= and config= apply to original files only")
        return pipe
    card = dict(parts.pop("card", {}))
    if tokenizer is not None:
        tpipe, tparts = _pipeline_parts(tokenizer, tokenizer_config, None, None, cache_dir, map_location,
                                        verify)
        if tpipe is not None:  # the tokenizer of a saved pipeline
            tparts = {"tokenizer": tpipe.tokenizer, "card": tpipe.card_info}
        if tparts.get("tokenizer") is None:
            raise CheckpointError(f"{tokenizer}: holds no tokenizer")
        if parts.get("tokenizer") is not None:
            raise ValidationError(f"from_pretrained(tokenizer): {ref} has a tokenizer of its own")
        parts["tokenizer"] = tparts["tokenizer"]
        tcard = tparts.get("card", {})
        card = {**tcard, **card, "source": [s for s in (tcard.get("source"), card.get("source")) if s]}
    if parts.get("tokenizer") is None:
        raise ValidationError(f"from_pretrained: {ref} holds no tokenizer; pass tokenizer=<reference> "
                              "(e.g. hf://FoundationVision/LlamaGen/vq_ds16_c2i.pt)")
    pipe = cls(**parts)
    pipe.card_info = card
    return pipe.to(map_location).eval()


def load_component(ref: Any, role: str, cls: type, *, config: Any = None,
                   revision: Optional[str] = None, filename: Optional[str] = None,
                   cache_dir: Any = None, map_location: Any = "cpu", verify: bool = True) -> Any:
    """``Tokenizer.from_pretrained`` / ``Prior.from_pretrained``: the ``role`` part of a saved
    pipeline or an original file, checked to be a ``cls``."""
    pipe, parts = _pipeline_parts(ref, config, revision, filename, cache_dir, map_location, verify)
    obj = getattr(pipe, role) if pipe is not None else parts.get(role)
    if obj is None:
        raise CheckpointError(f"{ref}: holds no {role}")
    if not isinstance(obj, cls):
        raise CheckpointError(f"{ref}: its {role} is a {type(obj).__name__}, not a {cls.__name__}")
    return obj.to(map_location).eval()


# --------------------------------------------------------------------------- saving
def _yaml_list(values: Any) -> list[str]:
    if values is None:
        return []
    return [str(v) for v in (values if isinstance(values, (list, tuple)) else [values])]


def model_card(pipe: "Pipeline", card: dict[str, Any]) -> str:
    """The ``README.md`` text for ``pipe`` (see :func:`save_pretrained`)."""
    import yaml

    cfg = pipe.get_config()
    licence = card.get("license") or "unknown"
    datasets = _yaml_list(card.get("datasets"))
    front = {"library_name": LIBRARY_NAME, "license": str(licence),
             "tags": ["taming", "image-generation", *_yaml_list(card.get("tags"))]}
    if datasets:
        front["datasets"] = datasets
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {card.get('title') or 'taming pipeline'}", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    lines += ["## Components", "", "| role | component |", "|---|---|"]
    for role in ("tokenizer", "prior", "sampler", "conditioner"):
        if role in cfg:
            lines.append(f"| {role} | `{cfg[role]['name']}` |")
    sources = _yaml_list(card.get("source"))
    lines += ["", "## Training data", "", ", ".join(datasets) if datasets else "Not recorded.", ""]
    metrics = card.get("metrics") or {}
    lines += ["## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Licence", "", f"{licence}" + (f" (as stated by the authors of {', '.join(sources)})"
                                                    if sources and licence != "unknown" else ""), ""]
    if sources:
        lines += ["## Source", ""] + [f"- {s}" for s in sources] + [""]
    lines += ["## Usage", "", "```python", "import taming_core", "",
              'pipe = taming_core.Pipeline.from_pretrained("<this repo or directory>")', "```", "",
              "## Config", "", "```json", json.dumps(cfg, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def save_pretrained(pipe: "Pipeline", directory: Union[str, os.PathLike], *, license: Optional[str] = None,  # noqa: A002
                    datasets: Any = None, metrics: Optional[dict[str, Any]] = None,
                    description: Optional[str] = None, title: Optional[str] = None,
                    tags: Any = None, source: Any = None) -> Path:
    """``pipe.save(directory)`` plus a model card ``README.md``. Card fields given here win
    over those the pipeline was loaded with (``pipe.card_info``)."""
    given = {"license": license, "datasets": datasets, "metrics": metrics, "description": description,
             "title": title, "tags": tags, "source": source}
    card = {**{k: v for k, v in pipe.card_info.items() if k in CARD_KEYS},
            **{k: v for k, v in given.items() if v is not None}}
    out = pipe.save(directory)
    with atomic_path(out / CARD_FILE) as tmp:
        tmp.write_text(model_card(pipe, card), encoding="utf-8")
    return out


def push_to_hub(pipe: "Pipeline", repo_id: str, *, revision: Optional[str] = None,
                private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: str = "Upload taming pipeline", **card: Any) -> str:
    """Upload :func:`save_pretrained` output to ``repo_id`` (created if missing); returns
    the commit URL. Refused while ``HF_HUB_OFFLINE`` is set."""
    if _REPO_REF.match(repo_id) is None or "@" in repo_id:
        raise ValidationError(f"push_to_hub(repo_id): expected owner/name, got {repo_id!r}")
    if offline():
        raise CheckpointError(f"push_to_hub({repo_id}): HF_HUB_OFFLINE is set; uploading needs the network")
    hub = _hub()
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="taming-push-") as tmp:
        save_pretrained(pipe, tmp, **card)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))
