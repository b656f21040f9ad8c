"""Where the configs of ``kick sweep`` run: this machine (N at once) or a Ray cluster.

Both executors run every config the same way, :func:`run_config_job`: ONE isolated
``python -m kick_analysis.cli eval`` child process (= ``lm_eval`` with the kick plugin) writing
lm-eval's standard output into ``<output>/<slug>/`` and its console into ``<slug>/lm_eval.log``, then
the ``.kick_done.json`` marker. The files are therefore the same whichever executor ran them.

* :class:`LocalExecutor` (``--executor local --jobs N``): N configs at once in threads of the sweep
  process. With GPUs each job is pinned to its own ``--gpus-per-config`` device(s) through
  ``CUDA_VISIBLE_DEVICES``; on CPU the cores are split between the jobs (``OMP_NUM_THREADS``).
* :class:`RayExecutor` (``--executor ray [--address ADDR]``): each config is one Ray task with
  ``num_cpus=--cpus-per-config`` and ``num_gpus=--gpus-per-config``. The output folder and the
  compression cache must be on a filesystem every worker mounts at the same path; a worker that
  cannot see them fails the config with a message saying so (:func:`visibility_problem`).

Faults: a config whose child is killed by a signal (OOM killer, ``kill``) or whose Ray worker dies
(node lost) is retried up to ``retries`` times; an lm_eval error (exit code) is not retried (it would
fail the same way). Every attempt is recorded in ``<output>/.kick_sweep/attempts/<slug>.jsonl``.
Progress (:class:`Progress`) reads those records and the tail of each running config's
``lm_eval.log`` (the tqdm lines of the compression and of lm-eval), so it works for local and
remote workers alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterable

from kick_analysis.sweep_files import DONE_MARKER, SweepError, format_seconds, results_file, write_json_atomic

STATE_DIR = ".kick_sweep"  # under the output folder: token + attempt records
TOKEN_FILE = "token"
#: Environment variables the Ray executor forwards from the sweep process to each config's child.
FORWARD_ENV_PREFIXES = ("KICK_", "HF_", "TRANSFORMERS_", "OPENAI_")
RAY_INSTALL_HINT = ("--executor ray needs Ray, which is not installed in this environment. Install the extra: "
                    "pip install 'kick-eval[ray]'  (or: pip install 'ray>=2.9')")


# --------------------------------------------------------------------------- one config


@dataclasses.dataclass(frozen=True)
class ConfigJob:
    """Everything a worker needs to run one config (plain data: it travels to Ray workers)."""

    slug: str
    cmd: tuple[str, ...]  # the full lm_eval child command (cmd[0] = python)
    output: str  # the sweep's output folder (absolute)
    token: str  # this sweep's token, written in <output>/.kick_sweep/token by the driver
    cache_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the child
    verbose: bool = False

    @property
    def folder(self) -> Path:
        return Path(self.output) / self.slug


@dataclasses.dataclass
class Outcome:
    """What happened to one config (the last attempt)."""

    slug: str
    status: str  # "done" | "failed"
    seconds: float = 0.0
    start_time: float = 0.0  # epoch seconds
    end_time: float = 0.0
    returncode: int | None = None
    results: str | None = None  # results_*.json relative to the output folder
    error: str | None = None
    host: str = ""
    attempt: int = 1

    def to_entry(self) -> dict[str, Any]:
        """Fields for the config's entry in sweep.json."""
        entry = {"status": self.status, "seconds": round(self.seconds, 1), "returncode": self.returncode,
                 "host": self.host, "attempts": self.attempt,
                 "start_time": round(self.start_time, 3), "end_time": round(self.end_time, 3),
                 "started": _stamp(self.start_time), "finished": _stamp(self.end_time)}
        if self.results:
            entry["results"] = self.results
        if self.error:
            entry["error"] = self.error
        return entry


class ConfigKilled(RuntimeError):
    """The config's child was killed by a signal (OOM killer, kill): worth another attempt."""

    def __init__(self, outcome: Outcome):
        super().__init__(f"{outcome.slug}: {outcome.error}")
        self.outcome = outcome

    def __reduce__(self):  # travels back from Ray workers with its outcome
        return (ConfigKilled, (self.outcome,))


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else ""


def state_dir(output: str | Path) -> Path:
    return Path(output) / STATE_DIR


def write_token(output: Path, cache_dir: Path | None) -> str:
    """A fresh token for this sweep run in ``<output>/.kick_sweep/token`` (and the cache folder)."""
    token = secrets.token_hex(8)
    d = state_dir(output)
    d.mkdir(parents=True, exist_ok=True)
    (d / TOKEN_FILE).write_text(token)
    if cache_dir is not None:
        marks = cache_dir / STATE_DIR
        marks.mkdir(parents=True, exist_ok=True)
        (marks / token).write_text(str(output))
    return token


def visibility_problem(job: ConfigJob) -> str | None:
    """None when this worker sees the sweep's output folder (and cache), else what is wrong."""
    host = socket.gethostname()
    try:
        seen = (state_dir(job.output) / TOKEN_FILE).read_text().strip()
    except OSError:
        seen = None
    if seen != job.token:
        why = "does not exist there" if seen is None else "holds another sweep run's token"
        return (f"worker {host} cannot see the sweep's output folder {job.output} ({STATE_DIR}/{TOKEN_FILE} "
                f"{why}). On a Ray cluster the output folder and the compression cache must be on a "
                "filesystem every node mounts at the same path (NFS, Lustre, ...); see docs/scale-out.md")
    if job.cache_dir is not None and not (Path(job.cache_dir) / STATE_DIR / job.token).is_file():
        return (f"worker {host} cannot see the sweep's compression cache {job.cache_dir}: put --cache-dir on a "
                "filesystem every node mounts at the same path (or use --no-cache); see docs/scale-out.md")
    return None


def _attempt_file(job: ConfigJob) -> Path:
    return state_dir(job.output) / "attempts" / f"{job.slug}.jsonl"


def read_attempts(output: str | Path, slug: str, token: str) -> list[dict]:
    """This sweep run's attempt records of ``slug`` (oldest first)."""
    try:
        lines = (state_dir(output) / "attempts" / f"{slug}.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("token") == token:
            out.append(rec)
    return out


def _record_attempt(job: ConfigJob) -> int:
    path = _attempt_file(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    attempt = len(read_attempts(job.output, job.slug, job.token)) + 1
    rec = {"token": job.token, "attempt": attempt, "host": socket.gethostname(), "pid": os.getpid(),
           "start_time": time.time()}
    with open(path, "a", encoding="utf-8") as f:  # one short line per append
        f.write(json.dumps(rec) + "\n")
    return attempt


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: the lm_eval child gets SIGTERM when the process (thread) that started it dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run_child(cmd: Iterable[str], folder: Path, env: dict[str, str], echo: Callable[[str], None] | None = None,
              on_start: Callable[[subprocess.Popen], None] | None = None) -> int:
    """Run the lm_eval child, its console output into ``folder/lm_eval.log``; returns its exit code."""
    cmd = list(cmd)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lm_eval.log", "w", encoding="utf-8", buffering=1) as log:  # line-buffered: live log
        log.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        if on_start is not None:
            on_start(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # text mode: tqdm's \r updates arrive as lines too
                log.write(line)
                if echo is not None:
                    echo(line)
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


def run_config_job(job: ConfigJob, on_start: Callable[[subprocess.Popen], None] | None = None) -> Outcome:
    """Run one config (on whichever machine calls it); raises :class:`ConfigKilled` when its child was killed."""
    host = socket.gethostname()
    start = time.time()
    problem = visibility_problem(job)
    if problem:
        return Outcome(job.slug, "failed", start_time=start, end_time=time.time(), error=problem, host=host)
    attempt = _record_attempt(job)
    folder = job.folder
    if folder.exists():  # partial output of a killed or failed attempt
        shutil.rmtree(folder)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(job.env))
    echo = None
    if job.verbose:
        def echo(line: str) -> None:
            sys.stderr.write(f"[{job.slug}] {line}")
    rc = run_child(job.cmd, folder, env, echo=echo, on_start=on_start)
    end = time.time()
    results = results_file(folder)
    out = Outcome(job.slug, "failed", seconds=end - start, start_time=start, end_time=end, returncode=rc,
                  host=host, attempt=attempt)
    if rc == 0 and results is not None:
        out.status, out.results = "done", str(results.relative_to(job.output))
        write_json_atomic(folder / DONE_MARKER, {"slug": job.slug, "command": list(job.cmd[3:]), "seconds": out.seconds,
                                                 "results": out.results, "finished": _stamp(end),
                                                 "host": host, "attempt": attempt})
        return out
    if rc < 0:
        out.error = f"killed by signal {-rc} ({_signame(-rc)}) on {host}, attempt {attempt}"
        raise ConfigKilled(out)
    out.error = f"exit code {rc}" if rc else "no results_*.json written"
    return out


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "?"


# --------------------------------------------------------------------------- progress


_TQDM = re.compile(r"^\s*(?P<desc>[^|\r\n]*?):?\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")
_STAGE_NAMES = {
    "running generate_until requests": "generating",
    "running loglikelihood_rolling requests": "perplexity windows",
    "running loglikelihood requests": "scoring",
    "loading weights": "loading model",
    "wanda": "calibrating layer", "sparsegpt": "calibrating layer", "gptq": "calibrating layer",
    "magnitude": "pruning layer", "rtn": "quantizing layer",
}
_STAGE_EVENTS = (("kick: loaded compressed weights from cache", "compressed weights from cache"),
                 ("kick: compressing", "compressing"),
                 ("Building contexts", "building requests"),
                 ("Selected Tasks", "loading tasks"))


def stage_of(log: Path, tail_bytes: int = 16384) -> str:
    """The running config's stage from the tail of its ``lm_eval.log``, e.g. ``generating 12/100``."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return "starting"
    for line in reversed(re.split(r"[\r\n]+", text)):
        m = _TQDM.match(line)
        if m:
            desc = m["desc"].strip().rstrip(":")
            name = _STAGE_NAMES.get(desc.lower(), desc or "preparing requests")
            return f"{name} {m['n']}/{m['total']}"
        for needle, name in _STAGE_EVENTS:
            if needle in line:
                return name
    return "starting"


_ELAPSED = re.compile(r"\[(?P<elapsed>\d+(?::\d+)+)<")


def stage_times(log: Path) -> dict[str, float]:
    """Seconds per stage of a finished config, from the progress bars in its ``lm_eval.log`` (the elapsed time of
    each bar's last update; a stage with several bars, e.g. one per calibrated layer group, is summed):
    ``{"loading model": 4.0, "calibrating layer": 31.0, "generating": 52.0, "perplexity windows": 40.0}``."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    last: dict[tuple[str, str, int], float] = {}  # one bar -> elapsed seconds at its last update
    bars: dict[tuple[str, str], tuple[int, int]] = {}  # (stage, total) -> (bar number, its last count)
    for line in re.split(r"[\r\n]+", text):
        m, e = _TQDM.match(line), _ELAPSED.search(line)
        name = m and e and _STAGE_NAMES.get(m["desc"].strip().rstrip(":").lower())
        if not name:
            continue
        n = int(m["n"])
        number, seen = bars.get((name, m["total"]), (0, -1))
        if n < seen:  # the count went back: a new bar of the same kind (the next layer group, config...)
            number += 1
        bars[(name, m["total"])] = (number, n)
        seconds = 0.0
        for part in e["elapsed"].split(":"):
            seconds = seconds * 60 + int(part)
        last[(name, m["total"], number)] = seconds
    times: dict[str, float] = {}
    for (name, _, _), seconds in last.items():
        times[name] = times.get(name, 0.0) + seconds
    return times


class Progress:
    """Configs done / running / queued / failed, with each running config's stage, on one tqdm line."""

    def __init__(self, output: Path, token: str, total: int, done_before: int, interval: float | None = None):
        from tqdm.auto import tqdm

        self.output, self.token = output, token
        self.done, self.failed = done_before, 0
        self.interval = interval if interval is not None else (1.0 if sys.stderr.isatty() else 5.0)
        self._last_text, self._last_time = None, 0.0
        self.bar = tqdm(total=total, initial=done_before, desc="sweep", unit="config", file=sys.stderr)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def finished(self, outcome: Outcome) -> None:
        if outcome.status == "done":
            self.done += 1
            where = f" on {outcome.host}" if outcome.host and outcome.host != socket.gethostname() else ""
            again = f" (attempt {outcome.attempt})" if outcome.attempt > 1 else ""
            self.write(f"  {outcome.slug}: done in {format_seconds(outcome.seconds)}{where}{again}")
        else:
            self.failed += 1
            log = self.output / outcome.slug / "lm_eval.log"
            self.write(f"  {outcome.slug}: FAILED ({outcome.error}) after {format_seconds(outcome.seconds)}; log {log}")
        self.bar.update(1)

    def refresh(self, pending: Iterable[str], force: bool = False) -> None:
        """Re-read the running configs' stages (at most every ``interval`` seconds)."""
        now = time.time()
        if not force and now - self._last_time < self.interval:
            return
        self._last_time = now
        running, queued = [], 0
        for slug in pending:
            attempts = read_attempts(self.output, slug, self.token)
            if not attempts:
                queued += 1
                continue
            stage = stage_of(self.output / slug / "lm_eval.log")
            again = f" (attempt {attempts[-1]['attempt']})" if attempts[-1]["attempt"] > 1 else ""
            running.append(f"{slug}: {stage}{again}")
        text = f"{len(running)} running, {queued} queued, {self.failed} failed"
        if running:
            text += " | " + " | ".join(running)
        if text != self._last_text:
            self._last_text = text
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- executors


OnFinish = Callable[[Outcome], None]


def _killed_outcome(exc: ConfigKilled) -> Outcome:
    out = exc.outcome
    out.error = f"{out.error}; gave up after {out.attempt} attempt(s)"
    return out


class LocalExecutor:
    """``jobs`` configs at once on this machine (threads, each running one lm_eval child)."""

    def __init__(self, jobs: int = 1, gpus_per_config: int | None = None, retries: int = 2,
                 device: str | None = None):
        if jobs < 1:
            raise SweepError(f"--jobs {jobs}: must be >= 1")
        if retries < 0:
            raise SweepError(f"--retries {retries}: must be >= 0")
        self.jobs, self.retries = jobs, retries
        self.slots = self._slots(jobs, gpus_per_config, device)
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False

    @staticmethod
    def _slots(jobs: int, gpus_per_config: int | None, device: str | None) -> list[dict[str, str]]:
        """One environment per job slot: pinned GPUs, or the CPU threads split between the jobs."""
        if gpus_per_config and device is not None and not device.startswith("cuda"):
            raise SweepError(f"--gpus-per-config with --device {device}: use --device cuda (or drop --gpus-per-config)")
        gpus = _visible_gpus()
        use_gpus = bool(gpus) and (device is None or device.startswith("cuda")) or bool(gpus_per_config)
        if use_gpus:
            k = gpus_per_config or 1
            if k < 1:
                raise SweepError(f"--gpus-per-config {k}: must be >= 1")
            if len(gpus) < jobs * k:
                raise SweepError(
                    f"--jobs {jobs} x --gpus-per-config {k} needs {jobs * k} GPU(s); this machine shows "
                    f"{len(gpus)} ({', '.join(gpus) or 'none'}). Lower --jobs or --gpus-per-config.")
            if jobs > 1 and device not in (None, "cuda") and device.startswith("cuda:"):
                raise SweepError(f"--device {device} with --jobs {jobs}: each job is pinned to its own GPU(s) "
                                 "with CUDA_VISIBLE_DEVICES; use --device cuda")
            if jobs == 1 and (gpus_per_config is None or k == len(gpus)):
                return [{}]  # today's behaviour: the child sees every GPU
            return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * k:(i + 1) * k])} for i in range(jobs)]
        if jobs == 1:
            return [{}]  # today's behaviour: all cores for the one child
        threads = str(max(1, _cpu_count() // jobs))
        return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(jobs)]

    def describe(self) -> str:
        pins = [s.get("CUDA_VISIBLE_DEVICES") for s in self.slots]
        if any(pins):
            return f"local, {self.jobs} job(s) on GPU(s) " + " | ".join(p for p in pins if p)
        if self.jobs > 1:
            return f"local, {self.jobs} jobs x {self.slots[0]['OMP_NUM_THREADS']} CPU thread(s)"
        return "local"

    def _register(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            if self._stopping:
                proc.terminate()

    def _run(self, job: ConfigJob, free: "list[dict[str, str]]") -> Outcome:
        with self._lock:
            slot = free.pop()
        try:
            job = dataclasses.replace(job, env=tuple({**dict(job.env), **slot}.items()))
            for attempt in range(self.retries + 1):
                try:
                    return run_config_job(job, on_start=self._register)
                except ConfigKilled as exc:
                    if self._stopping or attempt == self.retries:
                        return _killed_outcome(exc)
            raise AssertionError("unreachable")
        finally:
            with self._lock:
                free.append(slot)

    def run(self, jobs: list[ConfigJob], on_finish: OnFinish, progress: Progress) -> None:
        free = list(reversed(self.slots))
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="kick-sweep")
        futures: dict[Future, str] = {pool.submit(self._run, job, free): job.slug for job in jobs}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_finish(fut.result())
                progress.refresh([futures[f] for f in pending], force=bool(done))
        except BaseException:
            self._stopping = True
            for fut in futures:
                fut.cancel()
            with self._lock:
                procs = list(self._procs)
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)


class RayExecutor:
    """Each config one Ray task (``num_cpus``/``num_gpus`` per config), retried when its worker dies."""

    def __init__(self, address: str | None = None, gpus_per_config: float | None = None,
                 cpus_per_config: float | None = None, retries: int = 2):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SweepError(RAY_INSTALL_HINT) from None
        if retries < 0:
            raise SweepError(f"--retries {retries}: must be >= 0")
        for name, value in (("--gpus-per-config", gpus_per_config), ("--cpus-per-config", cpus_per_config)):
            if value is not None and value < 0:
                raise SweepError(f"{name} {value}: must be >= 0")
        self.address = address
        self.gpus = gpus_per_config or 0
        self.cpus = cpus_per_config if cpus_per_config is not None else 1
        self.retries = retries
        self._started_ray = False

    def describe(self) -> str:
        return (f"ray ({self.address or 'RAY_ADDRESS / local cluster'}), {self.cpus:g} CPU(s)"
                + (f" + {self.gpus:g} GPU(s)" if self.gpus else "") + " per config")

    def _connect(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=True, include_dashboard=False)
            self._started_ray = True
        res = ray.cluster_resources()
        if res.get("CPU", 0) < self.cpus or res.get("GPU", 0) < self.gpus:
            raise SweepError(
                f"the Ray cluster has {res.get('CPU', 0):g} CPU(s) and {res.get('GPU', 0):g} GPU(s); one config asks "
                f"for {self.cpus:g} CPU(s) and {self.gpus:g} GPU(s) (--cpus-per-config / --gpus-per-config), so no "
                "config could ever be scheduled")
        return ray

    def run(self, jobs: list[ConfigJob], on_finish: OnFinish, progress: Progress) -> None:
        ray = self._connect()
        threads = str(max(1, int(self.cpus))) if self.cpus else "1"
        forward = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}
        task = ray.remote(_ray_run_config).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries,
            retry_exceptions=[ConfigKilled], name="kick-sweep-config")
        refs = {}
        for job in jobs:
            env = {**forward, **dict(job.env), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            refs[task.remote(dataclasses.replace(job, env=tuple(env.items())))] = job
        # Ctrl-C / SIGTERM only set a flag while Ray's client calls run: a KeyboardInterrupt raised in the middle of
        # one can leave its locks held, and the cancels below then wait forever (seen under load). The loop checks
        # the flag between waits of at most a second and stops the tasks itself.
        interrupted = threading.Event()
        handlers = _catch_interrupts(interrupted)
        try:
            pending = list(refs)
            while pending:
                if interrupted.is_set():
                    raise KeyboardInterrupt
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    on_finish(self._outcome(ray, ref, refs[ref]))
                progress.refresh([refs[r].slug for r in pending], force=bool(ready))
            if interrupted.is_set():
                raise KeyboardInterrupt
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)  # kills the worker; its lm_eval child follows (PDEATHSIG)
            raise
        finally:
            try:
                if self._started_ray:
                    ray.shutdown()
            finally:
                _restore_handlers(handlers)

    def _outcome(self, ray, ref, job: ConfigJob) -> Outcome:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ConfigKilled):
                return _killed_outcome(cause)
            why = f"{type(cause).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        except ray.exceptions.RayError as exc:  # worker or node died (after max_retries), task cancelled
            why = f"{type(exc).__name__} ({str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})"
        attempts = read_attempts(job.output, job.slug, job.token)
        last = attempts[-1] if attempts else {}
        now = time.time()
        return Outcome(job.slug, "failed", seconds=now - last.get("start_time", now),
                       start_time=last.get("start_time", now), end_time=now, host=last.get("host", ""),
                       attempt=len(attempts) or 1,
                       error=f"Ray worker lost after {len(attempts) or 1} attempt(s): {why}")


def _catch_interrupts(flag: threading.Event) -> dict:
    """SIGINT and SIGTERM set ``flag`` instead of raising (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, lambda signum, frame: flag.set()) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(handlers: dict) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _ray_run_config(job: ConfigJob) -> Outcome:  # runs inside a Ray worker
    return run_config_job(job)


# --------------------------------------------------------------------------- helpers


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _visible_gpus() -> list[str]:
    """CUDA device ids this process may use (``CUDA_VISIBLE_DEVICES`` honoured)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover
        n = 0
    if n == 0:
        return []
    if env:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def make_executor(ns) -> LocalExecutor | RayExecutor:
    """The executor the sweep's options ask for (checked before anything runs)."""
    if ns.executor == "local":
        for flag, value in (("--address", ns.address), ("--cpus-per-config", ns.cpus_per_config)):
            if value is not None:
                raise SweepError(f"{flag} is an option of --executor ray")
        gpus = ns.gpus_per_config
        if gpus is not None and (gpus != int(gpus)):
            raise SweepError(f"--gpus-per-config {gpus:g}: the local executor pins whole GPUs")
        return LocalExecutor(jobs=ns.jobs, gpus_per_config=int(gpus) if gpus is not None else None,
                             retries=ns.retries, device=ns.device)
    if ns.executor == "ray":
        if ns.jobs != 1:
            raise SweepError("--jobs is an option of --executor local; on Ray the cluster's resources and "
                                "--cpus-per-config / --gpus-per-config decide how many configs run at once")
        return RayExecutor(address=ns.address, gpus_per_config=ns.gpus_per_config,
                           cpus_per_config=ns.cpus_per_config, retries=ns.retries)
    raise SweepError(f"--executor {ns.executor!r}: use local or ray")


def add_arguments(p) -> None:
    """The executor options of ``kick sweep``."""
    g = p.add_argument_group("where configs run (docs/scale-out.md)")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine (default); ray: one Ray task per config")
    g.add_argument("--jobs", "-j", type=int, default=1,
                   help="local: configs at once (GPUs: each pinned to its own; CPU: cores split); default 1")
    g.add_argument("--gpus-per-config", "--gpus_per_config", dest="gpus_per_config", type=float,
                   help="GPUs per config (local: whole GPUs pinned with CUDA_VISIBLE_DEVICES, default 1 when GPUs "
                        "are used; ray: num_gpus of each task, default 0)")
    g.add_argument("--cpus-per-config", "--cpus_per_config", dest="cpus_per_config", type=float,
                   help="ray: num_cpus of each task (default 1; also the child's thread count)")
    g.add_argument("--address", help="ray: cluster address (default $RAY_ADDRESS, else a running local cluster, "
                                     "else a new one on this machine)")
    g.add_argument("--retries", type=int, default=2,
                   help="attempts after the first for a config whose process is killed or whose worker dies "
                        "(default 2)")
