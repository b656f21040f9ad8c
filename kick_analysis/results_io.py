"""Reading lm-eval output folders: results JSONs, per-sample logs, compression summaries.

The one place that knows lm-eval's on-disk layout (0.4.x; lm-eval 0.5's differences are read back into it
on loading, see :func:`canonical_results` and :func:`canonical_sample`):

* ``--output_path DIR`` writes ``DIR/<model sanitized>/results_<date_id>.json``;
* ``--log_samples`` adds ``samples_<task>_<date_id>.jsonl`` with the SAME
  ``date_id`` next to it (one JSON object per document and filter, with
  ``doc_id``, ``doc_hash``, ``prompt_hash``, ``target_hash``, ``filtered_resps``,
  ``filter``, ``metrics`` and one key per metric);
* the results JSON has ``results[task]["<metric>,<filter>"]``, ``configs``,
  ``higher_is_better``, ``n-samples``, ``group_subtasks`` and ``config``
  (``model``, ``model_args`` + whatever the model's ``get_model_info()`` adds,
  e.g. the kick model classes' compression summary).

A *run* here is one model configuration in one folder: results files in the
same folder with the same ``model`` + ``model_args`` are merged (the newest
file wins per task), results files with different model args (two compression
settings written into the same ``<pretrained>`` folder) stay separate runs.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from kick_tasks.names import canonical_metric, canonical_metric_key, canonical_task, samples_task

RESULTS_RE = re.compile(r"^results_(?P<date>.+)\.json$")
_NON_METRIC_KEYS = {"alias", "name", "sample_len", " ", ""}


class ResultsError(ValueError):
    """An lm-eval output folder is missing, unreadable or unsuitable for the request."""


@dataclass
class Run:
    """One model configuration's lm-eval results (possibly merged from several results files)."""

    folder: Path
    results_paths: list[Path]
    model: str
    model_args: dict[str, Any]
    config: dict[str, Any]
    results: dict[str, dict[str, Any]]  # task -> results entry (with "metric,filter" keys)
    higher_is_better: dict[str, dict[str, bool]]
    task_configs: dict[str, dict[str, Any]]
    n_samples: dict[str, dict[str, Any]]
    groups: set[str]
    group_subtasks: dict[str, list[str]] = field(default_factory=dict)
    samples_files: dict[str, Path] = field(default_factory=dict)  # task -> samples jsonl

    @property
    def label(self) -> str:
        return str(self.folder)

    @property
    def tasks(self) -> list[str]:
        """Leaf tasks (groups excluded), in results order."""
        return [t for t in self.results if t not in self.groups]

    @property
    def pretrained(self) -> str:
        return str(self.model_args.get("pretrained", self.config.get("model_name", "")))

    def metric_values(self, task: str) -> dict[tuple[str, str], Any]:
        """``{(metric, filter): value}`` for a task (stderr entries left out)."""
        return metric_values(self.results.get(task, {}))

    def output_type(self, task: str) -> str | None:
        return self.task_configs.get(task, {}).get("output_type")


def parse_model_args(value: Any) -> dict[str, Any]:
    """``config.model_args`` is a dict (CLI) or an ``a=b,c=d`` string (Python API)."""
    if isinstance(value, dict):
        return dict(value)
    if not value:
        return {}
    out: dict[str, Any] = {}
    for part in str(value).split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def metric_values(entry: dict[str, Any]) -> dict[tuple[str, str], Any]:
    """Split lm-eval's ``"acc,none"`` keys into ``(metric, filter)``; drop stderr and bookkeeping keys."""
    out: dict[tuple[str, str], Any] = {}
    for key, value in entry.items():
        if key in _NON_METRIC_KEYS or "," not in key:
            continue
        metric, filter_key = key.split(",", 1)
        if metric.endswith("_stderr"):
            continue
        out[(metric, filter_key)] = value
    return out


def stderr_value(entry: dict[str, Any], metric: str, filter_key: str) -> float | None:
    value = entry.get(f"{metric}_stderr,{filter_key}")
    return value if isinstance(value, (int, float)) else None


def find_results_files(root: Path) -> list[Path]:
    """All ``results_*.json`` under ``root`` (recursively), sorted."""
    root = Path(root)
    if root.is_file():
        return [root] if RESULTS_RE.match(root.name) else []
    return sorted(p for p in root.rglob("results_*.json") if RESULTS_RE.match(p.name))


def samples_files_for(results_path: Path) -> dict[str, Path]:
    """``task -> samples_<task>_<date_id>.jsonl`` written by the same lm-eval call (canonical task names)."""
    m = RESULTS_RE.match(results_path.name)
    if not m:
        return {}
    date_id = m.group("date")
    suffix = f"_{date_id}.jsonl"
    out = {}
    for p in results_path.parent.glob(f"samples_*{suffix}"):
        task = canonical_task(p.name[len("samples_") : -len(suffix)])
        if task:
            out[task] = p
    return out


def _canonical_table(table: Any) -> Any:
    """``{task: value}`` keyed by canonical task names (a name already present keeps its own entry)."""
    if not isinstance(table, dict):
        return table
    out: dict[str, Any] = {}
    for task, value in table.items():
        name = canonical_task(task)
        out[name if name not in table else task] = value
    return out


def canonical_results(data: dict[str, Any]) -> dict[str, Any]:
    """A results JSON as kick reads it, whichever lm-eval and kick release wrote it: subtasks named
    ``<task>`` (lm-eval 0.5 writes ``<group>::<task>``) and renamed metrics under their current names
    (:mod:`kick_tasks.names`)."""
    out = dict(data)
    for key in ("results", "configs", "higher_is_better", "n-samples", "versions", "n-shot"):
        out[key] = _canonical_table(data.get(key))
    out["results"] = {
        task: {canonical_metric_key(task, k): v for k, v in entry.items()} if isinstance(entry, dict) else entry
        for task, entry in out["results"].items()
    }
    if isinstance(out.get("higher_is_better"), dict):
        out["higher_is_better"] = {
            task: {canonical_metric(task, m): v for m, v in hib.items()} if isinstance(hib, dict) else hib
            for task, hib in out["higher_is_better"].items()
        }
    if isinstance(data.get("group_subtasks"), dict):
        out["group_subtasks"] = {canonical_task(g): [canonical_task(t) for t in ts or []]
                                 for g, ts in data["group_subtasks"].items()}
    return out


def canonical_sample(row: dict[str, Any], task: str | None) -> dict[str, Any]:
    """One samples-file row as lm-eval 0.4 writes it: ``filtered_resps`` one response per request
    (lm-eval 0.5 keeps a list of repeats per request: ``[["answer"]]`` for 0.4's ``["answer"]``) and
    renamed metrics under their current names."""
    resps = row.get("filtered_resps")
    if (isinstance(resps, list) and resps
            and all(isinstance(r, list) and len(r) == 1 for r in resps)):  # 0.4: a string or a 2-tuple each
        row["filtered_resps"] = [r[0] for r in resps]
    if task is not None:
        for old in [k for k in row if canonical_metric(task, k) != k]:
            row[canonical_metric(task, old)] = row.pop(old)
        if isinstance(row.get("metrics"), list):
            row["metrics"] = [canonical_metric(task, m) for m in row["metrics"]]
    return row


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        warnings.warn(f"skipping {path}: not readable JSON ({exc})", stacklevel=3)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        warnings.warn(f"skipping {path}: not an lm-eval results file (no 'results' table)", stacklevel=3)
        return None
    return canonical_results(data)


def _run_key(folder: Path, data: dict[str, Any]) -> tuple[str, str, str]:
    cfg = data.get("config") or {}
    args = parse_model_args(cfg.get("model_args"))
    return (str(folder), str(cfg.get("model", "")), json.dumps(args, sort_keys=True, default=str))


def load_runs(paths: Iterable[Path | str], warn_empty: bool = True) -> list[Run]:
    """Every run under the given folders/files (recursive). Folders without lm-eval output are
    skipped with a warning naming them."""
    grouped: dict[tuple[str, str, str], list[tuple[Path, dict[str, Any]]]] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            warnings.warn(f"skipping {root}: does not exist", stacklevel=2)
            continue
        files = find_results_files(root)
        if not files and warn_empty:
            warnings.warn(f"skipping {root}: no lm-eval results_*.json found under it", stacklevel=2)
        for f in files:
            data = _load_json(f)
            if data is None:
                continue
            grouped.setdefault(_run_key(f.parent, data), []).append((f, data))
    runs = []
    for (_, _, _), items in grouped.items():
        items.sort(key=lambda it: it[0].name)  # date ids sort chronologically
        runs.append(_merge(items))
    runs.sort(key=lambda r: str(r.folder))
    return runs


def _merge(items: list[tuple[Path, dict[str, Any]]]) -> Run:
    first_path, first = items[0]
    cfg0 = first.get("config") or {}
    run = Run(
        folder=first_path.parent,
        results_paths=[],
        model=str(cfg0.get("model", "")),
        model_args=parse_model_args(cfg0.get("model_args")),
        config={},
        results={},
        higher_is_better={},
        task_configs={},
        n_samples={},
        groups=set(),
    )
    for path, data in items:  # oldest first: newer files overwrite per task
        run.results_paths.append(path)
        run.config.update(data.get("config") or {})
        for key in ("model_name", "model_name_sanitized"):
            if key in data:
                run.config.setdefault(key, data[key])
        samples = samples_files_for(path)
        run.groups.update((data.get("group_subtasks") or {}).keys())
        run.group_subtasks.update({g: list(ts) for g, ts in (data.get("group_subtasks") or {}).items() if ts})
        run.groups.update((data.get("groups") or {}).keys())
        for task, entry in data["results"].items():
            run.results[task] = entry
            run.higher_is_better[task] = (data.get("higher_is_better") or {}).get(task, {})
            run.task_configs[task] = (data.get("configs") or {}).get(task, {})
            run.n_samples[task] = (data.get("n-samples") or {}).get(task, {})
            if task in samples:
                run.samples_files[task] = samples[task]
            else:
                run.samples_files.pop(task, None)
    run.groups -= {t for t in run.results if t in run.samples_files}
    return run


def load_single_run(path: Path | str) -> Run:
    """The one run in an lm-eval output folder; a clear error if there is none or several."""
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"{path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs([path], warn_empty=False)
    if not runs:
        raise ResultsError(
            f"{path} holds no lm-eval results (no results_*.json under it). Point at the folder given to "
            "lm_eval --output_path (or a sub-folder of it)."
        )
    if len(runs) > 1:
        listing = "\n  ".join(f"{r.folder} ({r.model} {format_model_args(r.model_args)})" for r in runs)
        raise ResultsError(f"{path} holds {len(runs)} different runs; point at one of them:\n  {listing}")
    return runs[0]


def format_model_args(args: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in args.items())


def load_samples(path: Path, filter_key: str | None = None) -> list[dict[str, Any]]:
    """Samples of one task, one entry per document, for ``filter_key`` (default: ``"none"`` when
    present, else the first filter in the file)."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ResultsError(f"{path}:{line_no}: not JSON ({exc})") from exc
    task = samples_task(Path(path).name)
    rows = [canonical_sample(r, task) for r in rows]
    filters = list(dict.fromkeys(r.get("filter", "none") for r in rows))
    if filter_key is None:
        filter_key = "none" if "none" in filters or not filters else filters[0]
    elif filters and filter_key not in filters:
        raise ResultsError(f"{path}: no samples for filter {filter_key!r}; filters present: {filters}")
    return [r for r in rows if r.get("filter", "none") == filter_key]


def sample_filters(path: Path) -> list[str]:
    """Filters present in a samples file, in file order."""
    seen: dict[str, None] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                seen.setdefault(json.loads(line).get("filter", "none"), None)
    return list(seen)


# --------------------------------------------------------------------------- compression summary

_SUMMARY_KEYS = ("measured_sparsity", "bits_per_weight")


def _find_summary(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    if depth > 4:
        return None
    if isinstance(obj, dict):
        if any(k in obj for k in _SUMMARY_KEYS):
            return obj
        for value in obj.values():
            found = _find_summary(value, depth + 1)
            if found is not None:
                return found
    return None


def _num(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


#: lm-eval model classes that load a checkpoint as it is (kick-hf: hf scored by kick's bounded scoring): a run of one
#: is dense only as a sweep's baseline config or when its checkpoint reads as float weights without zeros.
UNCOMPRESSED_MODELS = ("hf", "kick-hf")


def compression_info(run: Run) -> dict[str, Any]:
    """What was done to the model, from the results ``config`` (the kick model classes' summary,
    found wherever ``get_model_info()`` put it) and ``model_args``.

    Keys: ``method`` (``"dense"`` for an uncompressed model), ``kind`` (``dense``/``prune``/``quant``),
    ``sparsity`` (target), ``sparsity_type``, ``wbits``, ``groupsize``, ``measured_sparsity``,
    ``bits_per_weight``, ``seconds``.
    """
    args = run.model_args
    summary = _find_summary({k: v for k, v in run.config.items() if k != "model_args"}) or {}
    scfg = summary.get("config") if isinstance(summary.get("config"), dict) else {}
    model = run.model
    method = summary.get("method") or args.get("method") or scfg.get("method")
    if not method and model in ("kick-gptq", "kick-rtn"):
        method = model.split("-", 1)[1]
    if not method and model == "kick-bnb":
        method = str(args.get("load_in", args.get("mode", "bnb")))
    sparsity = _num(args.get("sparsity", scfg.get("sparsity")))
    sparsity_type = str(args.get("sparsity_type", scfg.get("sparsity_type")) or "unstructured")
    wbits = _num(args.get("wbits", scfg.get("wbits")))
    groupsize = _num(args.get("groupsize", scfg.get("groupsize")))
    scheme = args.get("scheme", scfg.get("scheme")) if model == "kick-quant" or scfg.get("scheme") else None
    if scheme:  # kick-quant: the compressed-tensors scheme names the format
        method = str(scheme).upper() + ("" if str(scfg.get("method", "rtn")) == "rtn" else f" {scfg.get('method')}")
        if scfg.get("smoothquant") is not None:  # SmoothQuant's alpha; the reference code's own arithmetic
            method += f" smoothquant {scfg['smoothquant']:g}"
        if scfg.get("quantizer") == "reference":
            method += " (reference quantizer)"
        groupsize = _num(scfg.get("group_size"))
    if scheme or model in ("kick-gptq", "kick-rtn", "kick-bnb") or str(method) in ("gptq", "rtn"):
        kind = "quant"
    elif method and (sparsity or ":" in sparsity_type):
        kind = "prune"
    elif summary or (str(model).startswith("kick-") and model not in UNCOMPRESSED_MODELS) \
            or sweep_slug(run.folder) == "dense":
        # a kick class at sparsity 0, or the baseline config of a kick sweep (``--model hf``, by construction)
        kind, method = "dense", "dense"
    else:  # a model kick did not compress: label it from what its checkpoint holds (never "dense" by default)
        return inspected_info(run)
    if kind == "prune" and ":" in sparsity_type:
        n, m = sparsity_type.split(":", 1)
        try:
            sparsity = int(n) / int(m) if sparsity in (None, 0.0) else sparsity  # N:M zeroes N of every M
        except ValueError:
            pass
    info = {
        "method": str(method),
        "kind": kind,
        "sparsity": sparsity if kind == "prune" else (0.0 if kind == "dense" else None),
        "sparsity_type": sparsity_type if kind == "prune" else None,
        "wbits": int(wbits) if wbits is not None and kind == "quant" else None,
        "groupsize": int(groupsize) if groupsize is not None and kind == "quant" else None,
        "measured_sparsity": _num(summary.get("measured_sparsity")),
        "bits_per_weight": _num(summary.get("bits_per_weight")),
        "seconds": _num(summary.get("seconds", summary.get("compression_seconds"))),
        # share of the decoder blocks' >= 2-D weights that were compressed (kick >= issue 12; None before)
        "coverage": _num((summary.get("coverage") or {}).get("compressed_fraction")),
        "activation_format": scfg.get("activation_format") if scheme else None,
    }
    return info


def inspected_info(run: Run) -> dict[str, Any]:
    """compression_info of a run kick did not compress: ``kick inspect`` of its local checkpoint
    (:mod:`kick_models.checkpoint_info`), or kind ``unknown`` when the checkpoint cannot be read here."""
    from kick_models.checkpoint_info import InspectError, describe

    base = {"sparsity": None, "sparsity_type": None, "wbits": None, "groupsize": None, "measured_sparsity": None,
            "bits_per_weight": None, "seconds": None, "coverage": None}
    args = run.model_args
    try:
        record = _inspect(str(args.get("pretrained", run.pretrained)), str(args.get("gguf_file") or "") or None)
    except (InspectError, OSError, ValueError) as exc:
        return {**base, "kind": "unknown", "method": f"{run.model} (not inspected: {exc})"}
    info = {**base, **describe(record)}
    if info["kind"] == "prune":
        info["sparsity"], info["sparsity_type"] = info["measured_sparsity"], "unstructured"
    if info["kind"] == "dense":
        info["sparsity"] = 0.0
    return info


_INSPECTED: dict[tuple, dict[str, Any]] = {}


def _inspect(pretrained: str, gguf_file: str | None) -> dict[str, Any]:
    from kick_models.checkpoint_info import inspect_checkpoint

    folder = Path(pretrained)
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir())) \
        if folder.is_dir() else ()
    key = (str(folder.resolve()) if folder.exists() else pretrained, gguf_file, stamp)
    if key not in _INSPECTED:
        _INSPECTED[key] = inspect_checkpoint(folder, gguf_file)
    return _INSPECTED[key]


def config_label(run: Run) -> str:
    """Short human label: ``dense``, ``wanda 50%``, ``sparsegpt 2:4``, ``gptq 4-bit g128``; for a checkpoint
    kick did not compress, what ``kick inspect`` measured (``compressed-tensors W4A16 ... 4.27 bits/w``)."""
    info = compression_info(run)
    if info.get("inspected") or info["kind"] == "unknown":
        return inspected_label(info)
    if info["kind"] == "dense":
        return "dense"
    if info["kind"] == "prune":
        st = info["sparsity_type"] or "unstructured"
        if ":" in st:
            return f"{info['method']} {st}"
        return f"{info['method']} {round(100 * (info['sparsity'] or 0))}%"
    bits = f"{info['wbits']}-bit" if info["wbits"] is not None else ""
    group = f" g{info['groupsize']}" if info["groupsize"] not in (None, -1) else ""
    return f"{info['method']} {bits}{group}".strip()


# --------------------------------------------------------------------------- model names and data provenance


def display_name(pretrained: str, name: str | None = None) -> str:
    """A model's name for tables: ``name`` if given, a Hub id as is, a local folder's last part."""
    if name:
        return name
    text = str(pretrained).rstrip("/\\")
    looks_local = text.startswith(("/", ".", "~", "<")) or "\\" in text or Path(text).expanduser().exists()
    return Path(text).name if looks_local and Path(text).name else text


def inspected_label(info: dict[str, Any]) -> str:
    if info["kind"] == "unknown":
        return info["method"]
    bits = info.get("bits_per_weight")
    measured = [f"{bits:.2f} bits/w" if bits is not None else None,
                f"{100 * info['measured_sparsity']:.1f}% zeros" if info.get("measured_sparsity") else None]
    what = "float weights" if info["kind"] == "dense" else info["method"]
    return f"{what} [{', '.join(m for m in measured if m)}, measured]"


def sweep_slug(folder: Path) -> str | None:
    """Config slug when ``folder`` lies inside a ``kick sweep`` output (``<sweep>/<slug>/...``)."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if (parent / "sweep.json").is_file() and parent != folder:
            return folder.relative_to(parent).parts[0]
    return None


def sweep_manifest(folder: Path) -> dict[str, Any] | None:
    """The ``sweep.json`` of the sweep a run folder belongs to (searched upwards), or None."""
    for parent in [Path(folder), *Path(folder).parents]:
        if (parent / "sweep.json").is_file():
            try:
                data = json.loads((parent / "sweep.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return None
            return data if isinstance(data, dict) else None
    return None


def run_display_name(run: Run) -> str:
    """The display name of a run's model: its sweep's ``--name`` if any, else :func:`display_name`."""
    manifest = sweep_manifest(run.folder) or {}
    same_model = manifest.get("model") in (None, run.pretrained)
    return display_name(run.pretrained, manifest.get("name") if same_model else None)


def data_provenance(run: Run) -> dict[str, dict[str, Any]]:
    """Per data set the run used, its provenance record (source, stand_in, excerpt, records, sha256).

    Task data: ``configs.<task>.metadata.kick_data`` (kick_models.data); calibration:
    ``config.kick_compression.calibration_data`` (the kick model classes), under ``"calibration"``.
    Runs written before provenance was recorded give an empty dict.
    """
    out: dict[str, dict[str, Any]] = {}
    for task in run.tasks:
        block = (run.task_configs.get(task, {}).get("metadata") or {}).get("kick_data")
        if isinstance(block, dict):
            out.update({k: v for k, v in block.items() if isinstance(v, dict)})
    summary = run.config.get("kick_compression")
    if isinstance(summary, dict) and isinstance(summary.get("calibration_data"), dict):
        out["calibration"] = summary["calibration_data"]
    return out


def format_provenance(record: dict[str, Any]) -> str:
    """One line: ``name: location source (N records, sha256 abcdef012345) [stand-in: why] [excerpt: what]``."""
    text = (f"{record.get('name', '?')}: {record.get('location', '?')} {record.get('source', '?')} "
            f"({record.get('records')} records, sha256 {str(record.get('sha256', ''))[:12]})")
    if record.get("stand_in"):
        text += f" [stand-in: {record['stand_in']}]"
    if record.get("excerpt"):
        text += f" [{record['excerpt']}]"
    return text


def data_differences(a: Run, b: Run, tasks: Iterable[str] | None = None) -> list[str]:
    """Warnings for data sets (of ``tasks``, default all) whose content differs between two runs.

    Calibration data is left out (it belongs to how a model was compressed, not to what it was scored on).
    """
    def task_data(run: Run) -> dict[str, dict[str, Any]]:
        out = {}
        for task in (tasks if tasks is not None else run.tasks):
            block = (run.task_configs.get(task, {}).get("metadata") or {}).get("kick_data")
            if isinstance(block, dict):
                out.update({k: v for k, v in block.items() if isinstance(v, dict)})
        return out

    da, db = task_data(a), task_data(b)
    problems = []
    for name in sorted(set(da) | set(db)):
        ra, rb = da.get(name), db.get(name)
        if ra is None or rb is None:
            continue  # one run predates provenance records: nothing to compare
        if ra.get("sha256") != rb.get("sha256"):
            problems.append(f"the runs used different {name} data: {format_provenance(ra)} vs {format_provenance(rb)}")
    return problems
