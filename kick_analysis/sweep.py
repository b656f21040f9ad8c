"""``kick sweep``: evaluate one model under a grid of compression configs, resumably.

    kick sweep --model PRETRAINED --output DIR
               [--model_args k=v,...]                     extra args for every config (gguf_file=, dtype= ...)
               [--methods magnitude,wanda,sparsegpt,gptq,rtn]
               [--sparsity 0.1:0.7:0.1 | 0.2,0.5 | wanda=0.5]   unstructured sparsities of the pruning methods
               [--nm 2:4,4:8]                             N:M patterns of the pruning methods
               [--wbits 8,4,3 | rtn=4] [--groupsize 128]  bit widths / group size of gptq and rtn
               [--schemes FP8_DYNAMIC,W8A8,NVFP4A16,W4A16:group_size=64]   kick-quant (compressed-tensors) schemes
                                                          (W4A16:method=awq, W8A8:smoothquant=0.8: AWQ, SmoothQuant)
               [--calib c4] [--nsamples 128] [--seqlen 2048] [--seed 0]
               [--tasks kick] [--limit N] [--batch_size B] [--device cpu] [--include_path DIR]
               [--force] [--dry-run] [--verbose] [--no-divergence] [-- any other lm_eval arguments, verbatim]
               [--executor local --jobs N | --executor ray --address ADDR --cpus-per-config C]
               [--gpus-per-config K] [--retries 2]        where configs run (docs/scale-out.md)

Plan: the dense baseline (``--model hf``, same ``pretrained`` and ``--model_args``) always comes first,
then every pruning method x (sparsities + N:M patterns), then every quantization method x bit
widths. Sparsity 0 is the dense model and is not repeated per method.

Ranges: ``start:stop:step`` (stop included when the grid hits it: ``0.1:0.5:0.2`` = 0.1, 0.3, 0.5,
``0.1:0.6:0.2`` = 0.1, 0.3, 0.5); lists ``0.2,0.5``; both can be mixed (``0.1:0.3:0.1,0.5``).
``--sparsity``, ``--nm`` and ``--wbits`` may be repeated with a ``method=`` prefix to set one
method's grid (``--wbits 8,4,3 --wbits rtn=4``).

Each config runs as ONE subprocess ``python -m kick_analysis.cli eval`` (= ``lm_eval`` with the kick
plugin) over all tasks, with ``--log_samples``, writing lm-eval's standard output into
``DIR/<config slug>/`` and its console output into ``DIR/<config slug>/lm_eval.log``. A crash in
one config does not stop the sweep; failures are listed at the end (exit code 1). All compressed
configs share one compression cache (``cache_dir=DIR/.kick_cache``, or ``--cache-dir``; ``--no-cache``
turns it off), so a re-run reuses the compressed weights.

Divergence (issue 25): when the tasks include ``kick_wikitext_ppl`` (or the ``kick`` group), the dense config
writes the dense reference to ``DIR/divergence_reference`` (``--metadata kick_reference_out``) and runs first,
alone; every other config compares with it (``kick_reference``), so its results hold the KL divergence,
same-top-token and dp metrics (kick_tasks/divergence.py). ``--no-divergence`` turns this off.

Resuming: after lm_eval succeeds, ``DIR/<slug>/.kick_done.json`` is written atomically with the
exact model/task/lm_eval arguments. Running the same command again skips every config whose
marker matches and redoes the rest (a killed config's partial folder is cleared first). Changing
``--limit`` or the tasks re-runs everything. ``DIR/sweep.json`` records the model, the configs
and their status; a DIR holding results of a different model is refused unless ``--force``.

Executors (kick_analysis/sweep_executors.py): ``local`` runs ``--jobs`` configs at once on this machine,
``ray`` runs each config as one Ray task; both run the same child, retry a config whose process is
killed (``--retries``) and show each running config's stage on the progress line.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from kick_analysis.results_io import display_name
from kick_analysis.sweep_files import (  # noqa: F401  (re-exported: kick_analysis.sweep.SweepError etc.)
    DONE_MARKER, SweepError, format_seconds, read_json, results_file, write_json_atomic)

PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
QUANT_METHODS = ("gptq", "rtn")
METHODS = PRUNE_METHODS + QUANT_METHODS
MODEL_CLASS = {"magnitude": "kick-pruned", "wanda": "kick-pruned", "sparsegpt": "kick-pruned",
               "gptq": "kick-gptq", "rtn": "kick-rtn"}
NEEDS_CALIBRATION = {"magnitude": False, "wanda": True, "sparsegpt": True, "gptq": True, "rtn": False}
MANIFEST = "sweep.json"
CACHE_DIR = ".kick_cache"
#: lm_eval flags the sweep sets itself (must not come after --).
RESERVED_FLAGS = ("--model", "--model_args", "--tasks", "--output_path", "-o")


# --------------------------------------------------------------------------- value grids


def _fmt_num(x: float) -> str:
    return f"{x:.6g}"


def parse_range(text: str) -> list[float]:
    """``"0:0.7:0.1"`` -> [0.0, 0.1, ..., 0.7] (stop included when hit), ``"0.2,0.5"`` -> [0.2, 0.5].

    Errors (:class:`SweepError`) for a zero/negative step, an inverted (empty) range, or text that
    is not a number.
    """
    values: list[float] = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        if ":" in item:
            parts = item.split(":")
            if len(parts) != 3:
                raise SweepError(f"range {item!r}: expected start:stop:step, e.g. 0.1:0.7:0.1")
            try:
                start, stop, step = (float(p) for p in parts)
            except ValueError:
                raise SweepError(f"range {item!r}: start, stop and step must be numbers") from None
            if not step > 0:
                raise SweepError(f"range {item!r}: the step must be > 0")
            if stop < start:
                raise SweepError(f"range {item!r} is empty: stop ({_fmt_num(stop)}) < start ({_fmt_num(start)})")
            n = int(math.floor((stop - start) / step + 1e-9))
            values += [round(start + i * step, 10) for i in range(n + 1)]
        else:
            try:
                values.append(float(item))
            except ValueError:
                raise SweepError(f"{item!r} is not a number (use start:stop:step or a comma list)") from None
    if not values:
        raise SweepError(f"{text!r} gives no values")
    return list(dict.fromkeys(values))


def parse_int_list(text: str, name: str) -> list[int]:
    out = []
    for v in parse_range(text):
        if not float(v).is_integer():
            raise SweepError(f"--{name}: {v:g} is not an integer")
        out.append(int(v))
    return out


def parse_per_method(values: Sequence[str] | None, methods: Sequence[str], name: str) -> dict[str, str]:
    """``["0.5", "wanda=0.3"]`` -> ``{m: "0.5" for m in methods} | {"wanda": "0.3"}``."""
    out: dict[str, str] = {}
    specific: dict[str, str] = {}
    for value in values or []:
        head, sep, rest = value.partition("=")
        if sep and not any(c.isdigit() for c in head):
            method = head.strip().lower()
            if method not in METHODS:
                raise SweepError(f"--{name} {value!r}: unknown method {method!r}; methods are {', '.join(METHODS)}")
            if method not in methods:
                raise SweepError(f"--{name} {value!r}: method {method!r} is not in --methods {','.join(methods)}")
            specific[method] = rest
        else:
            for m in methods:
                out[m] = value
    out.update(specific)
    return out


# --------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """One point of the grid: the lm-eval model class and the compression args it gets."""

    slug: str
    method: str  # "dense" or a compression method
    model: str  # lm-eval model name
    compression_args: tuple[tuple[str, Any], ...] = ()

    def model_args(self, pretrained: str, extra: dict[str, str], cache_dir: Path | None) -> str:
        """lm-eval ``--model_args``; ``cache_dir=None`` turns the compression cache off (``cache=false``)."""
        args = {"pretrained": pretrained, **extra, **dict(self.compression_args)}
        if self.method != "dense":
            if cache_dir is None:
                args["cache"] = "false"
            else:
                args["cache_dir"] = str(cache_dir)
        return ",".join(f"{k}={v}" for k, v in args.items())

    def to_dict(self) -> dict[str, Any]:
        return {"slug": self.slug, "method": self.method, "model": self.model, "args": dict(self.compression_args)}


def _calib_args(method: str, ns: argparse.Namespace) -> list[tuple[str, Any]]:
    if not NEEDS_CALIBRATION[method]:
        return []
    out = []
    for key in ("calib", "nsamples", "seqlen", "seed"):
        value = getattr(ns, key)
        if value is not None:
            out.append((key, value))
    return out


def build_configs(ns: argparse.Namespace) -> list[SweepConfig]:
    """The plan (dense first), validated by the compression core's own parsers before anything runs."""
    methods = [m.strip().lower() for m in (ns.methods or "").split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SweepError(f"unknown method(s) {unknown}; methods are {', '.join(METHODS)}")
    prune = [m for m in methods if m in PRUNE_METHODS]
    quant = [m for m in methods if m in QUANT_METHODS]
    sparsity = parse_per_method(ns.sparsity, prune, "sparsity")
    nm = parse_per_method(ns.nm, prune, "nm")
    wbits = parse_per_method(ns.wbits, quant, "wbits")
    # with --score_batch_size the baseline is scored by kick's bounded scoring too (kick-hf: hf's numbers, capped batch)
    configs = [SweepConfig("dense", "dense", "kick-hf" if ns.score_batch_size else "hf")]
    for method in prune:
        grid = parse_range(sparsity[method]) if method in sparsity else []
        for s in grid:
            if not 0.0 <= s < 1.0:
                raise SweepError(f"--sparsity {_fmt_num(s)} for {method}: sparsity must be in [0, 1)")
        patterns = [p.strip() for p in nm.get(method, "").split(",") if p.strip()]
        if not grid and not patterns:
            raise SweepError(f"method {method} has no --sparsity and no --nm pattern")
        for s in grid:
            if s == 0.0:
                continue  # the dense baseline
            configs.append(SweepConfig(
                f"{method}-s{s * 100:.6g}", method, MODEL_CLASS[method],
                (("method", method), ("sparsity", _fmt_num(s)), ("sparsity_type", "unstructured"),
                 *_calib_args(method, ns))))
        for p in patterns:
            n_, _, m_ = p.partition(":")
            configs.append(SweepConfig(
                f"{method}-{n_}of{m_}", method, MODEL_CLASS[method],
                (("method", method), ("sparsity_type", p), *_calib_args(method, ns))))
    configs += scheme_configs(ns)
    for method in quant:
        if method not in wbits:
            raise SweepError(f"method {method} has no --wbits")
        for bits in parse_int_list(wbits[method], "wbits"):
            configs.append(SweepConfig(
                f"{method}-w{bits}-g{ns.groupsize}" if ns.groupsize != -1 else f"{method}-w{bits}-row",
                method, MODEL_CLASS[method],
                (("method", method), ("wbits", bits), ("groupsize", ns.groupsize), *_calib_args(method, ns))))
    slugs = [c.slug for c in configs]
    dupes = sorted({s for s in slugs if slugs.count(s) > 1})
    if dupes:
        raise SweepError(f"the grid repeats configs {dupes}")
    validate_configs(configs)
    return configs


def scheme_configs(ns: argparse.Namespace) -> list[SweepConfig]:
    """``--schemes NAME[:key=value[:key=value]]`` -> one ``kick-quant`` config each (e.g. ``W4A16:group_size=64``,
    ``NVFP4A16:method=rtn``); calibration args are passed to the schemes that use data."""
    from kick_models.compress import schemes

    out = []
    for item in (t.strip() for t in (getattr(ns, "schemes", None) or "").split(",")):
        if not item:
            continue
        name, *options = item.split(":")
        args: list[tuple[str, Any]] = [("scheme", name.upper())]
        for option in options:
            key, eq, value = option.partition("=")
            if not eq:
                raise SweepError(f"--schemes {item!r}: expected NAME[:key=value...], e.g. W4A16:group_size=64")
            args.append((key.strip(), value.strip()))
        opts = dict(args)
        try:
            scheme = schemes.resolve_scheme(name, int(opts["group_size"]) if "group_size" in opts else None)
        except (ValueError, ImportError) as exc:
            raise SweepError(f"--schemes {item!r}: {exc}") from None
        if opts.get("method", "rtn") != "rtn" or "smoothquant" in opts or schemes.has_static_activations(scheme):
            args += [(k, getattr(ns, k)) for k in ("calib", "nsamples", "seqlen", "seed") if getattr(ns, k) is not None]
        slug = "quant-" + "-".join([name.lower(), *(o.replace("=", "") for o in options)])
        out.append(SweepConfig(slug, "scheme", "kick-quant", tuple(args)))
    return out


def validate_configs(configs: Sequence[SweepConfig]) -> None:
    """Check every config with the compression core's parsers (same checks the model classes run)."""
    try:
        from kick_models.compress.config import CompressionConfigError, parser_for
    except ImportError:  # pragma: no cover - compression core missing
        return
    for c in configs:
        if c.method == "dense":
            continue
        args = dict(c.compression_args)
        try:
            parser_for(c.model)(args)
        except CompressionConfigError as exc:
            raise SweepError(f"config {c.slug}: {exc}") from None


def validate_model(model: str) -> None:
    """A --model written as a local path must exist (checked before any lm_eval process starts)."""
    from kick_models.compress.config import CompressionConfigError, check_pretrained

    try:
        check_pretrained(model)
    except CompressionConfigError as exc:
        raise SweepError(f"--model: {exc}") from None


# --------------------------------------------------------------------------- tasks


def validate_tasks(tasks: Sequence[str], include_path: str | None) -> bool:
    """Every task name/pattern must be known to lm-eval (kick tasks first, built-ins if needed). Returns whether
    kick's task folder (and ``include_path``) alone holds them all: the children then skip indexing lm-eval's
    ~15,000 built-in task files (``KICK_TASKS_ONLY=1``, seconds per config)."""
    from kick_tasks import task_manager

    def unknown_in(tm) -> list[str]:
        known = set(tm.all_tasks)
        return [t for t in tasks if t not in known and not fnmatch.filter(known, t)]

    missing = unknown_in(task_manager(include_path=include_path, include_defaults=False))
    if not missing:
        return True
    # maybe built-in lm-eval tasks (indexing them takes a few seconds)
    missing = unknown_in(task_manager(include_path=include_path, include_defaults=True))
    if missing:
        raise SweepError(f"unknown task(s) {missing}; see `lm_eval ls tasks` (kick tasks: kick_*, group kick)")
    return False


# --------------------------------------------------------------------------- files


def check_output_dir(out: Path, model_identity: dict[str, Any], force: bool) -> None:
    """Refuse a folder that holds a sweep (or lm-eval results) of a different model unless --force."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SweepError(f"--output {out} exists and is not a folder")
    manifest = read_json(out / MANIFEST)
    if isinstance(manifest, dict):
        old = {k: manifest.get(k) for k in model_identity}
        if old != model_identity and not force:
            raise SweepError(
                f"--output {out} holds a sweep of a different model ({old}, now {model_identity}). "
                "Use another --output folder, or --force to run there anyway."
            )
        return
    from kick_analysis.results_io import load_runs

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs([out], warn_empty=False)
    others = sorted({r.pretrained for r in runs if r.pretrained != model_identity["pretrained"]})
    if others and not force:
        raise SweepError(f"--output {out} holds lm-eval results of other model(s) {others}. "
                         "Use another --output folder, or --force.")


# --------------------------------------------------------------------------- running


def cache_dir(ns: argparse.Namespace, out: Path) -> Path | None:
    """The shared compression cache: ``--cache-dir``, default ``<output>/.kick_cache``; None with ``--no-cache``."""
    if ns.no_cache:
        return None
    return Path(ns.cache_dir).resolve() if ns.cache_dir else out / CACHE_DIR


#: where the dense config writes the divergence reference that every other config compares with
REFERENCE_DIR = "divergence_reference"
DIVERGENCE_TASKS = ("kick", "kick_wikitext_ppl")


def divergence_on(ns: argparse.Namespace) -> bool:
    """The dense config writes a KLD reference and the others compare with it when kick_wikitext_ppl runs."""
    return not getattr(ns, "no_divergence", False) and any(t in DIVERGENCE_TASKS for t in ns.task_list)


def with_metadata(passthrough: list[str], extra: dict[str, Any]) -> list[str]:
    """``passthrough`` with ``extra`` merged into its ``--metadata`` JSON (added when absent)."""
    out, found = [], False
    i = 0
    while i < len(passthrough):
        arg = passthrough[i]
        if arg == "--metadata" or arg.startswith("--metadata="):
            text = arg.split("=", 1)[1] if "=" in arg else passthrough[i + 1]
            i += 1 if "=" in arg else 2
            try:
                meta = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SweepError(f"--metadata after -- is not JSON ({exc}): {text!r}") from None
            out += ["--metadata", json.dumps({**meta, **extra})]
            found = True
            continue
        out.append(arg)
        i += 1
    return out if found else out + ["--metadata", json.dumps(extra)]


def lm_eval_command(config: SweepConfig, ns: argparse.Namespace, out: Path, passthrough: list[str]) -> list[str]:
    extra = parse_kv(ns.model_args)
    if ns.score_batch_size:
        extra["score_batch_size"] = str(ns.score_batch_size)
    if divergence_on(ns):
        key = "kick_reference_out" if config.method == "dense" else "kick_reference"
        passthrough = with_metadata(passthrough, {key: str(out / REFERENCE_DIR)})
    cmd = [sys.executable, "-m", "kick_analysis.cli", "eval",
           "--model", config.model,
           "--model_args", config.model_args(ns.model, extra, cache_dir(ns, out)),
           "--tasks", ",".join(ns.task_list),
           "--output_path", str(out / config.slug),
           "--log_samples"]
    for flag in ("limit", "batch_size", "device", "include_path"):
        value = getattr(ns, flag)
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    return cmd + passthrough


def parse_kv(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise SweepError(f"--model_args: {part!r} is not key=value")
        k, v = part.split("=", 1)
        if k.strip() == "pretrained":
            raise SweepError("--model_args: give the model with --model, not pretrained=")
        out[k.strip()] = v.strip()
    return out


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "".join(path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-n:])
    except OSError:
        return ""


def _raise_interrupt(signum, frame) -> None:
    """SIGTERM -> KeyboardInterrupt, so the running lm_eval child is stopped and the manifest saved."""
    raise KeyboardInterrupt


def preflight(configs: Sequence[SweepConfig], ns: argparse.Namespace, passthrough: list[str]) -> list[dict]:
    """Resolve every data set of the tasks and of the calibration once, before any config starts
    (one error listing every missing data set and every place tried; see kick_analysis.preflight)."""
    from kick_analysis.preflight import PreflightError, sweep_preflight

    try:
        return sweep_preflight(configs, ns.task_list, passthrough)
    except PreflightError as exc:
        raise SweepError(str(exc)) from None


def run_sweep(ns: argparse.Namespace, passthrough: list[str]) -> int:
    out = Path(ns.output).resolve()
    configs = build_configs(ns)
    from kick_analysis.sweep_executors import make_executor

    executor = make_executor(ns)  # bad executor options fail here, before anything loads
    validate_model(ns.model)
    kick_tasks_only = validate_tasks(ns.task_list, ns.include_path)
    extra = parse_kv(ns.model_args)
    identity = {"model": ns.model, "model_args": extra}
    check_output_dir(out, identity, ns.force)
    plan = [(c, lm_eval_command(c, ns, out, passthrough)) for c in configs]
    if ns.dry_run:
        for c, cmd in plan:
            print(f"{c.slug}: {shlex.join(cmd)}")
        return 0
    data = preflight(configs, ns, passthrough)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        **identity,
        "name": ns.name or display_name(ns.model),
        "data": data,
        "tasks": ns.task_list,
        "lm_eval_args": {k: getattr(ns, k) for k in ("limit", "batch_size", "score_batch_size", "device", "include_path")},
        "passthrough": passthrough,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "configs": [],
    }
    old = read_json(out / MANIFEST)
    if isinstance(old, dict) and old.get("created"):
        manifest["created"] = old["created"]
    entries = {c.slug: {**c.to_dict(), "status": "pending", "command": cmd[3:]} for c, cmd in plan}
    manifest["configs"] = list(entries.values())

    def save() -> None:
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(out / MANIFEST, manifest)

    todo = []
    for c, cmd in plan:
        marker = read_json(out / c.slug / DONE_MARKER)
        if isinstance(marker, dict) and marker.get("command") == cmd[3:]:
            entries[c.slug].update(status="done", seconds=marker.get("seconds"), results=marker.get("results"),
                                   resumed=True)
        else:
            todo.append((c, cmd))
    save()
    done_before = len(plan) - len(todo)
    print(f"kick sweep: {len(plan)} configs x {len(ns.task_list)} task(s) -> {out}"
          + (f" ({done_before} already done, skipped)" if done_before else "")
          + f" [{executor.describe()}]", file=sys.stderr)
    from kick_analysis.sweep_executors import ConfigJob, Progress, write_token

    failures: list[str] = []
    cache = cache_dir(ns, out)
    token = write_token(out, cache)
    from kick_models.autoload import TASKS_ONLY_ENV

    child_env = ((TASKS_ONLY_ENV, "1"),) if kick_tasks_only else ()
    jobs = [ConfigJob(c.slug, tuple(cmd), str(out), token, str(cache) if cache else None, env=child_env,
                      verbose=ns.verbose) for c, cmd in todo]
    progress = Progress(out, token, total=len(plan), done_before=done_before)
    for job in jobs:
        entries[job.slug].update(status="queued")
    save()

    def on_finish(outcome) -> None:
        entries[outcome.slug].update(outcome.to_entry(), log=str(out / outcome.slug / "lm_eval.log"))
        if outcome.status != "done":
            failures.append(outcome.slug)
        save()
        progress.finished(outcome)

    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    # with the divergence reference, the dense config runs (alone) before the configs that read it
    stages = [[j for j in jobs if j.slug == "dense"], [j for j in jobs if j.slug != "dense"]] \
        if divergence_on(ns) else [jobs]
    try:
        for stage in stages:
            if stage:
                executor.run(stage, on_finish, progress)
    except KeyboardInterrupt:
        interrupted = True
        for e in entries.values():
            if e["status"] in ("running", "queued"):
                e["status"] = "interrupted"
        save()
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
    if interrupted:
        print(f"kick sweep: interrupted; run the same command again to continue ({out / MANIFEST})",
              file=sys.stderr)
        return 130
    for slug in failures:
        log = out / slug / "lm_eval.log"
        print(f"\n--- {slug} failed; last lines of {log}:\n{_tail(log)}", file=sys.stderr)
    n_done = sum(e["status"] == "done" for e in entries.values())
    print(f"kick sweep: {n_done}/{len(plan)} configs done" + (f", {len(failures)} failed: {', '.join(failures)}"
                                                               if failures else "")
          + f". Next: kick report {out} --out {out / 'report'}", file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kick sweep", description=__doc__.split("\n\n")[0],
                                epilog="Everything after -- goes to lm_eval verbatim.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pretrained model (folder or Hugging Face id)")
    p.add_argument("--model_args", "--model-args", dest="model_args", default="",
                   help="extra model args for every config, e.g. gguf_file=x.gguf,dtype=float32")
    p.add_argument("--output", "-o", required=True, help="sweep folder (one sub-folder per config)")
    p.add_argument("--methods", default=None,
                   help=f"comma list of {', '.join(METHODS)} (default: the three pruning methods; none with "
                        "--schemes)")
    p.add_argument("--sparsity", action="append",
                   help="unstructured sparsities: start:stop:step (stop included if hit) or a list; "
                        "repeatable with a method= prefix (default 0.1:0.7:0.1 when no --nm)")
    p.add_argument("--nm", action="append", help="N:M patterns, e.g. 2:4,4:8 (repeatable, method= prefix)")
    p.add_argument("--wbits", action="append", help="bit widths of gptq/rtn, e.g. 8,4,3 (repeatable, method= prefix)")
    p.add_argument("--groupsize", type=int, default=128, help="quantization group size (-1 = per row; default 128)")
    p.add_argument("--schemes", help="kick-quant compressed-tensors schemes, e.g. FP8_DYNAMIC,W8A8,NVFP4A16,"
                                     "W4A16:group_size=64 (options after ':'; runs next to --methods)")
    p.add_argument("--calib", help="calibration source (c4, wikitext2, a file); default: the model class's")
    p.add_argument("--nsamples", type=int, help="calibration windows")
    p.add_argument("--seqlen", type=int, help="calibration window length in tokens")
    p.add_argument("--seed", type=int, help="calibration sampling seed")
    p.add_argument("--cache-dir", "--cache_dir", dest="cache_dir",
                   help="compression cache shared by all configs (default <output>/.kick_cache)")
    p.add_argument("--no-cache", action="store_true", help="do not cache compressed weights (cache=false)")
    p.add_argument("--tasks", default="kick", help="comma list of lm-eval tasks/groups (default: the kick group)")
    p.add_argument("--limit", help="lm_eval --limit")
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", help="lm_eval --batch_size")
    p.add_argument("--score_batch_size", "--score-batch-size", dest="score_batch_size", type=int,
                   help="at most N sequences per loglikelihood scoring forward pass (model arg score_batch_size of "
                        "every config; the dense baseline then runs as kick-hf, hf's numbers): lets generation run "
                        "at a larger --batch_size than the scoring's full-vocabulary logits fit in memory for")
    p.add_argument("--device", help="lm_eval --device")
    p.add_argument("--include_path", "--include-path", dest="include_path", help="lm_eval --include_path")
    p.add_argument("--force", action="store_true", help="run even if --output holds another model's results")
    p.add_argument("--no-divergence", action="store_true",
                   help="do not measure KL divergence / same top token against the dense config "
                        f"(default: on when kick_wikitext_ppl runs; reference in <output>/{REFERENCE_DIR})")
    p.add_argument("--name", help="the model's display name in sweep.json and kick report "
                                  "(default: the model id, or a local folder's last part)")
    p.add_argument("--dry-run", action="store_true", help="print the lm_eval commands and exit")
    p.add_argument("--verbose", "-v", action="store_true", help="also echo lm_eval's output")
    from kick_analysis.sweep_executors import add_arguments

    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1:]
    ns = build_parser().parse_args(argv)
    try:
        bad = [a for a in passthrough if a.split("=", 1)[0] in RESERVED_FLAGS]
        if bad:
            raise SweepError(f"{bad} after -- : the sweep sets --model/--model_args/--tasks/--output_path itself")
        if ns.methods is None:
            ns.methods = "" if ns.schemes else "magnitude,wanda,sparsegpt"
        from kick_models.scoring import parse_score_batch_size

        try:  # the model classes' own parser: the same values are accepted or refused here, before anything runs
            ns.score_batch_size = parse_score_batch_size(ns.score_batch_size)
        except ValueError as exc:
            raise SweepError(f"--score_batch_size: {exc}") from None
        if "score_batch_size" in parse_kv(ns.model_args):
            raise SweepError("--model_args score_batch_size=...: give it as --score_batch_size N (the dense baseline "
                             "then runs as kick-hf, which takes it; lm-eval's hf does not)")
        ns.task_list = [t.strip() for t in ns.tasks.split(",") if t.strip()]
        if not ns.task_list:
            raise SweepError("--tasks is empty")
        if not ns.sparsity and not ns.nm and any(m.strip() in PRUNE_METHODS for m in ns.methods.split(",")):
            ns.sparsity = ["0.1:0.7:0.1"]
        if not ns.wbits and any(m.strip() in QUANT_METHODS for m in ns.methods.split(",")):
            ns.wbits = ["8,4,3"]
        return run_sweep(ns, passthrough)
    except SweepError as exc:
        print(f"kick sweep: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
