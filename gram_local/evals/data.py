"""Loading the official JudgeBench and RM-Bench files: from a local path, or from the hub once.

Only plain records come out of here; scoring never sees a file. Field names are the official ones:
JudgeBench rows have `pair_id`, `source`, `question`, `response_A`, `response_B`, `label`; RM-Bench
items have `id`, `prompt`, `chosen[3]`, `rejected[3]` and, in `total_dataset.json`, `domain`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gram_local.errors import DataError, DownloadError

JUDGEBENCH_REPO = "ScalerLab/JudgeBench"
RMBENCH_REPO = "THU-KEG/RM-Bench"
RMBENCH_HUB_FILE = "total_dataset.json"


# --------------------------------------------------------------------------------------- JudgeBench


@dataclass(frozen=True)
class JudgeBenchSplit:
    name: str
    response_model: str
    hub_file: str  # path inside the hub dataset
    github_file: str  # the name the JudgeBench repository uses

    @property
    def local_names(self) -> tuple[str, ...]:
        return (self.github_file, Path(self.hub_file).name)


JUDGEBENCH_SPLITS: dict[str, JudgeBenchSplit] = {
    "gpt-4o": JudgeBenchSplit(
        "gpt-4o",
        "gpt-4o-2024-05-13",
        "data/gpt-00000-of-00001.jsonl",
        "dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl",
    ),
    "claude-3.5-sonnet": JudgeBenchSplit(
        "claude-3.5-sonnet",
        "claude-3-5-sonnet-20240620",
        "data/claude-00000-of-00001.jsonl",
        "dataset=judgebench,response_model=claude-3-5-sonnet-20240620.jsonl",
    ),
}
_SPLIT_ALIASES = {
    "gpt": "gpt-4o",
    "gpt-4o-2024-05-13": "gpt-4o",
    "claude": "claude-3.5-sonnet",
    "claude-3-5-sonnet-20240620": "claude-3.5-sonnet",
}
DEFAULT_JUDGEBENCH_SPLIT = "gpt-4o"  # the split the GRAM papers report

# Official categories, by prefix of `source`, in the order the papers' tables use.
JUDGEBENCH_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("knowledge", "mmlu-pro"),
    ("reasoning", "livebench-reasoning"),
    ("math", "livebench-math"),
    ("coding", "livecodebench"),
)


def resolve_split(name: str) -> JudgeBenchSplit:
    key = _SPLIT_ALIASES.get(name, name)
    if key not in JUDGEBENCH_SPLITS:
        names = ", ".join([*JUDGEBENCH_SPLITS, *_SPLIT_ALIASES])
        raise DataError(f"unknown JudgeBench split {name!r}; choose one of: {names}")
    return JUDGEBENCH_SPLITS[key]


def judgebench_category(source: str) -> str:
    for category, prefix in JUDGEBENCH_CATEGORIES:
        if source.startswith(prefix):
            return category
    raise DataError(f"JudgeBench source {source!r} belongs to no official category")


@dataclass(frozen=True)
class JudgeBenchPair:
    pair_id: str
    source: str
    question: str
    response_a: str
    response_b: str
    label: str  # "A>B" or "B>A"
    response_model: str | None = None

    @property
    def category(self) -> str:
        return judgebench_category(self.source)

    @property
    def a_is_better(self) -> bool:
        return self.label == "A>B"


def judgebench_path(split: JudgeBenchSplit, data: Path | None) -> Path:
    """The split's file: `data` itself, the split's file inside the folder `data`, or the hub's."""
    if data is None:
        return _download(JUDGEBENCH_REPO, split.hub_file)
    if data.is_dir():
        for folder in (data, data / "data"):
            for name in split.local_names:
                if (folder / name).is_file():
                    return folder / name
        raise DataError(f"no JudgeBench {split.name} file in {data} (looked for {' or '.join(split.local_names)})")
    if not data.is_file():
        raise DataError(f"no such file: {data}")
    return data


def load_judgebench(path: Path) -> list[JudgeBenchPair]:
    pairs: list[JudgeBenchPair] = []
    seen: set[str] = set()
    for line_no, row in _read_jsonl(path):
        where = f"{path}:{line_no}"
        pair_id = _field(row, "pair_id", str, where)
        label = _field(row, "label", str, where)
        if label not in ("A>B", "B>A"):
            raise DataError(f"{where}: label must be 'A>B' or 'B>A', got {label!r}")
        if pair_id in seen:
            raise DataError(f"{where}: pair_id {pair_id} appears twice")
        seen.add(pair_id)
        source = _field(row, "source", str, where)
        judgebench_category(source)
        response_model = row.get("response_model")
        if response_model is not None and not isinstance(response_model, str):
            raise DataError(f"{where}: 'response_model' must be a string")
        if response_model is not None:
            _require_unicode(response_model, "response_model", where)
        pairs.append(
            JudgeBenchPair(
                pair_id=pair_id,
                source=source,
                question=_field(row, "question", str, where),
                response_a=_field(row, "response_A", str, where),
                response_b=_field(row, "response_B", str, where),
                label=label,
                response_model=response_model,
            )
        )
    if not pairs:
        raise DataError(f"{path} holds no JudgeBench pairs")
    return pairs


# ----------------------------------------------------------------------------------------- RM-Bench

# The five sources (files) of RM-Bench and the four domains they are scored as.
RMBENCH_SOURCES = ("chat", "math", "code", "safety-refuse", "safety-response")
RMBENCH_DOMAINS = ("chat", "math", "code", "safety")
# The three styles, in the official order of `chosen` and `rejected`.
RMBENCH_STYLES = ("concise", "detailed plain", "detailed markdown")


def rmbench_domain(source: str) -> str:
    """`safety-refuse` and `safety-response` pool into one safety domain, as the official script does."""
    return "safety" if source.startswith("safety") else source


@dataclass(frozen=True)
class RMBenchItem:
    source: str  # one of RMBENCH_SOURCES
    id: str | int
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]

    @property
    def domain(self) -> str:
        return rmbench_domain(self.source)

    @property
    def key(self) -> str:
        """Unique across files: ids repeat between domains (chat and code both have id 8)."""
        return f"{self.source}/{self.id}"


def rmbench_paths(data: Sequence[Path] | None) -> list[Path]:
    """Files to read: the hub's total_dataset.json, or the given files and folders.

    A folder contributes its total_dataset.json when it has one, else its .json files whose names
    name a domain (the repository's `<domain>_filtered.json`).
    """
    if not data:
        return [_download(RMBENCH_REPO, RMBENCH_HUB_FILE)]
    paths: list[Path] = []
    for entry in data:
        if entry.is_dir():
            if (entry / RMBENCH_HUB_FILE).is_file():
                paths.append(entry / RMBENCH_HUB_FILE)
                continue
            found = sorted(p for p in entry.glob("*.json") if _source_from_name(p) is not None)
            if not found:
                raise DataError(
                    f"no RM-Bench files in {entry} (looked for {RMBENCH_HUB_FILE} and *.json files named after "
                    f"a domain, such as chat_filtered.json)"
                )
            paths.extend(found)
        elif entry.is_file():
            paths.append(entry)
        else:
            raise DataError(f"no such file or folder: {entry}")
    return paths


def _source_from_name(path: Path) -> str | None:
    name = path.name
    for source in sorted(RMBENCH_SOURCES, key=len, reverse=True):
        if source in name:
            return source
    return None


def load_rmbench(path: Path) -> list[RMBenchItem]:
    """Items of one RM-Bench file; the domain comes from each item's `domain` or the file name."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as exc:
        raise DataError(f"cannot read {path}: JSON nested too deeply") from exc
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8 or JSON, an integer over Python's digit limit
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(rows, list):
        raise DataError(f"{path}: an RM-Bench file is a JSON array of items")
    from_name = _source_from_name(path)
    items: list[RMBenchItem] = []
    for index, row in enumerate(rows):
        where = f"{path}[{index}]"
        if not isinstance(row, dict):
            raise DataError(f"{where}: an item must be a JSON object")
        source = row.get("domain", from_name)
        if source is None:
            raise DataError(
                f"{where}: cannot tell the domain: the item has no 'domain' field and the file name "
                f"names none of {', '.join(RMBENCH_SOURCES)}"
            )
        if source not in RMBENCH_SOURCES:
            raise DataError(f"{where}: unknown domain {source!r}; expected one of {', '.join(RMBENCH_SOURCES)}")
        item_id = row.get("id")
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
            raise DataError(f"{where}: 'id' must be a string or an integer")
        if isinstance(item_id, str):
            _require_unicode(item_id, "id", where)
        chosen = _styles(row, "chosen", where)
        rejected = _styles(row, "rejected", where)
        items.append(
            RMBenchItem(
                source=source,
                id=item_id,
                prompt=_field(row, "prompt", str, where),
                chosen=chosen,
                rejected=rejected,
            )
        )
    return items


def load_rmbench_files(paths: Iterable[Path]) -> list[RMBenchItem]:
    items: list[RMBenchItem] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for item in load_rmbench(path):
            if item.key in seen:
                raise DataError(f"RM-Bench item {item.key} appears in {seen[item.key]} and again in {path}")
            seen[item.key] = path
            items.append(item)
    if not items:
        raise DataError("the RM-Bench files hold no items")
    return items


def parse_domains(values: Iterable[str]) -> list[str]:
    """`--domain` values (repeatable or comma-separated): domains (`safety` = both safety files) or sources."""
    names: list[str] = []
    choices = [*RMBENCH_DOMAINS, "safety-refuse", "safety-response"]
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name not in choices:
                raise DataError(f"unknown RM-Bench domain {name!r}; choose from: {', '.join(choices)}")
            if name not in names:
                names.append(name)
    return names


def in_domains(item: RMBenchItem, names: Sequence[str]) -> bool:
    return item.source in names or item.domain in names


# ------------------------------------------------------------------------------------------ helpers


def _download(repo: str, filename: str) -> Path:
    """Fetch one file of a hub dataset (cached by huggingface_hub, so offline reruns still work)."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset"))
    except Exception as exc:  # the hub raises many types; all mean the same thing to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(
            f"could not get {filename} from the hub dataset {repo} ({reason}); "
            "pass --data PATH to use a local copy"
        ) from exc


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except RecursionError as exc:
            raise DataError(f"{path}:{line_no}: JSON nested too deeply") from exc
        except ValueError as exc:  # bad UTF-8 or JSON, an integer over Python's digit limit
            raise DataError(f"{path}:{line_no}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: a row must be a JSON object")
        yield line_no, row


def _field(row: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = row.get(name)
    if not isinstance(value, kind):
        raise DataError(f"{where}: missing or non-{kind.__name__} field {name!r}")
    if isinstance(value, str):
        _require_unicode(value, name, where)
    return value


def _require_unicode(value: str, name: str, where: str) -> None:
    """JSON allows a lone `\\ud800`; UTF-8 cannot hold it, so neither can the tokenizer nor the OUT file."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        surrogate = f"U+{ord(value[exc.start]):04X}"
        raise DataError(f"{where}: {name!r} holds a lone surrogate ({surrogate}), which is not Unicode text") from None


def _styles(row: dict[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = row.get(name)
    if not (isinstance(value, list) and len(value) == len(RMBENCH_STYLES) and all(isinstance(v, str) for v in value)):
        raise DataError(f"{where}: {name!r} must be a list of {len(RMBENCH_STYLES)} strings (one per style)")
    for style in value:
        _require_unicode(style, name, where)
    return tuple(value)
