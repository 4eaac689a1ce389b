"""One campaign run end to end: systems, Parsl site, store, driver; Parsl is started and stopped here.

Signals: the first SIGINT or SIGTERM (Ctrl-C, `kill`, `timeout`, a batch job's end; to the driver alone or
to its whole process group) stops the campaign within seconds: relaxations in flight are marked
'interrupted', the store is closed, Parsl is shut down (bounded; its worker pools killed if it hangs), and
CampaignInterrupted is raised. A second signal ends the process at once. The interchanges run in their own
process group, so a signal to the driver's group reaches the driver only (no tracebacks from Parsl, and
Parsl's own shutdown still has its interchange to talk to).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import parsl
from parsl.executors import HighThroughputExecutor

from ..config import RunConfig, with_overrides
from ..records import SystemSpec
from ..live import summary_path
from ..store import CampaignStore, StoreError, check_not_held, check_same_campaign, naming_damage
from .driver import Campaign, CampaignInterrupted, CampaignResult, CampaignStopped, Progress, StopRequest
from .pausing import _on_driver_machine as on_driver_machine
from .pausing import pause_while_learning
from .site import load_site

#: How long (s) Parsl's shutdown may take after a signal before its worker pools and interchanges are killed.
SHUTDOWN_LIMIT_S = 10.0
#: The interchange, started in a process group of its own (Parsl's default is `interchange.py` on PATH).
ISOLATED_INTERCHANGE = [
    sys.executable, "-c",
    "import os, runpy; os.setpgrp(); "
    "runpy.run_module('parsl.executors.high_throughput.interchange', run_name='__main__', alter_sys=True)",
]


def store_path(config: RunConfig, method: str) -> Path:
    """The store of `method`: the configured output for online learning, '<stem>.<method>.h5' otherwise."""
    out = Path(config.campaign.output)
    return out if method == "online" else out.with_name(f"{out.stem}.{method}{out.suffix or '.h5'}")


def check_parent_program(config: RunConfig, parsl_config) -> None:
    """Before any worker starts: the parent's program (VASP's launcher and executable) must be on PATH when the
    site's parent workers run on this machine; elsewhere (a batch job, other nodes, other modules) the session
    checks it at its start instead. Raises ParentSetupError (one line: the program and the PATH searched)."""
    from ..parents import ParentSetupError, parent_class

    executors = {e.label: e for e in parsl_config.executors}
    if "parent" not in executors or not on_driver_machine(executors["parent"]):
        return
    missing = parent_class(config.parent.kind).missing_program(config.parent.options)
    if missing is not None:
        where = f"{config.path}: " if config.path and config.path != "<config>" else ""
        raise ParentSetupError(f"{where}{config.parent.kind} parent: {missing}; no worker was started")


def _choose_store(config: RunConfig) -> str:
    """How to give a campaign its own store, named after its config file where there is one."""
    where = f" in {config.path}" if config.path and config.path != "<config>" else ""
    example = f" (e.g. runs/{Path(config.path).stem}.h5)" if where else ""
    return f"Set campaign.output{where} or pass --output to give this campaign its own store{example}"


#: Characters a shell reads as something other than part of a file name (besides whitespace and control codes).
SHELL_SPECIAL = set("'\"\\$`;&|<>()*?[]{}!#~")


def shell_unsafe(path: str) -> str | None:
    """Which character of `path` a shell would not read as part of the name (one phrase), or None."""
    for char in path:
        if char == " ":
            return "a space"
        if char == "\n":
            return "a newline"
        if char.isspace() or not char.isprintable():
            return f"the character {char!r}"
        if char in SHELL_SPECIAL:
            return f"{char!r}"
    return None


def check_launchable(run_dir: str, parsl_config) -> None:
    """StoreError (one line) when Parsl would put `run_dir` into a shell command it cannot run as meant.

    Parsl's providers and HighThroughputExecutor write the run folder unquoted into the commands that start
    worker pools (`bash <script> 1><script>.out`, `--logdir=<run_dir>/...`): a space there runs and overwrites
    whatever file sits at the path before the space, and the run waits forever on workers that never start.
    Sites whose executors start no command (threads in the driver's process) are not affected.
    """
    problem = shell_unsafe(run_dir)
    if problem is None or not any(getattr(e, "provider", None) is not None for e in parsl_config.executors):
        return
    raise StoreError(
        f"the store's folder {Path(run_dir).parent} contains {problem}: Parsl starts its workers with this folder in "
        "unquoted shell commands (it would run something else); choose a folder whose path has only letters, "
        "digits and _ - . , + = @ : /")


def _stored_parent(run_config: str) -> tuple[str, dict] | None:
    """(kind, options) of a stored run's YAML config, or None where it cannot be read."""
    import yaml

    try:
        parent = (yaml.safe_load(run_config) or {}).get("parent") or {}
        options = dict(parent.get("options") or {})
        if parent.get("calculator"):  # kind ase: which calculator is as much a setting as its keywords
            options["calculator"] = parent["calculator"]
        return str(parent.get("kind", "emt")), options
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return None


def parent_change(path: str | Path, config: RunConfig) -> str | None:
    """How `config`'s parent (kind and options) differs from the one the store at `path` last ran with (one line:
    'ENCUT 350 -> 500; ...'), or None when they are the same, or the store is new, empty or unreadable (opening it
    for the run reports that). Read-only."""
    from ..store import open_h5, read_runs

    path = Path(path)
    if not path.exists():
        return None
    try:
        with open_h5(path, "r") as f:
            if not len(f.get("systems", {})):
                return None
            stored = [run for run in read_runs(f) if run.get("run_config")]
    except (StoreError, OSError, KeyError, ValueError):
        return None
    previous = _stored_parent(stored[-1]["run_config"]) if stored else None
    if previous is None:
        return None
    kind, options = previous
    changes = [f"parent.kind {kind} -> {config.parent.kind}"] if kind != config.parent.kind else []
    now = dict(config.parent.options)
    if config.parent.calculator:
        now["calculator"] = config.parent.calculator
    for key in sorted(set(options) | set(now), key=str):
        before, after = options.get(key, "(unset)"), now.get(key, "(unset)")
        if before != after:
            changes.append(f"{key} {before!r} -> {after!r}".replace("'(unset)'", "(unset)"))
    return "; ".join(changes) or None


#: What each method's results depend on besides the parent: the sections of its effective settings a resumed store
#: must share with the run that made it. Parent-only references (bfgs, cg, gpmin) use neither.
SETTINGS_USED = {"online": ("learner", "surrogate"), "warm-start": ("surrogate",)}
#: Settings that may change between runs of one store: budgets (where a relaxation stops, not how it goes) and
#: where the surrogate runs.
FREE_TO_CHANGE = {("learner", "max_parent_calls"), ("learner", "max_surrogate_steps"), ("surrogate", "device"),
                  ("surrogate", "threads")}


def effective_settings(config: RunConfig, method: str) -> dict:
    """The settings `method`'s results depend on ({"learner": {...}, "surrogate": {...}}, JSON-able), stored with
    each run of its store (CampaignStore settings)."""
    return {name: json.loads(json.dumps(dataclasses.asdict(getattr(config, name)), default=str))
            for name in SETTINGS_USED.get(method, ())}


def settings_change(path: str | Path, config: RunConfig, method: str) -> str | None:
    """How `config`'s learner or surrogate settings (those `method` uses, SETTINGS_USED) differ from what the store
    at `path` last ran with (one line: 'learner.k 3 -> 5; ...'), or None when they agree, the method uses neither,
    or the store is new, empty, unreadable or older than stored settings (from before 2026-12-05). Read-only."""
    from ..store import open_h5, read_runs

    path = Path(path)
    now = effective_settings(config, method)
    if not now or not path.exists():
        return None
    try:
        with open_h5(path, "r") as f:
            if not len(f.get("systems", {})):
                return None
            stored = [run["settings"] for run in read_runs(f) if run.get("settings")]
    except (StoreError, OSError, KeyError, ValueError):
        return None
    if not stored:
        return None
    changes = []
    for section, values in now.items():
        before = stored[-1].get(section) or {}
        for key in sorted(set(before) | set(values)):
            if (section, key) not in FREE_TO_CHANGE and before.get(key, "(unset)") != values.get(key, "(unset)"):
                changes.append(f"{section}.{key} {before.get(key, '(unset)')} -> {values.get(key, '(unset)')}")
    return "; ".join(changes) or None


def _check_deletable(path: Path) -> None:
    """OSError (EROFS, EACCES) when `path` cannot be deleted from its folder: asked before anything is deleted."""
    probe = path.parent / f".{path.name}.{os.getpid()}.probe"
    probe.touch()  # EROFS on a read-only filesystem, EACCES in a folder not ours
    probe.unlink()


def _isolate_interchanges(parsl_config) -> None:
    """Start each HighThroughputExecutor's interchange in its own process group (unless the site chose a command).

    A terminal's Ctrl-C, `timeout` or Slurm signal the driver's whole process group; an interchange in that
    group dies with a KeyboardInterrupt traceback and Parsl's shutdown then hangs waiting for it.
    """
    from parsl.executors.high_throughput.executor import DEFAULT_INTERCHANGE_LAUNCH_CMD

    for executor in parsl_config.executors:
        if isinstance(executor, HighThroughputExecutor) and list(executor.interchange_launch_cmd) == list(
            DEFAULT_INTERCHANGE_LAUNCH_CMD
        ):
            executor.interchange_launch_cmd = list(ISOLATED_INTERCHANGE)


def _kill_parsl_processes(dfk) -> None:
    """SIGKILL the interchanges and the local worker pools (their process groups), without waiting on anything."""
    for executor in dfk.executors.values():
        proc = getattr(executor, "interchange_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        provider = getattr(executor, "provider", None)  # the DFK's internal thread pool has none
        for job in list((getattr(provider, "resources", None) or {}).values()):
            pid = job.get("remote_pid") if isinstance(job, dict) else None
            if pid:
                try:
                    os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, ValueError):
                    pass


def parsl_problem(dfk) -> str | None:
    """Why the Parsl executors of `dfk` cannot run tasks any more (one line), or None: an interchange that exited,
    an executor Parsl put in its bad state, or every local worker pool of an executor gone. Cheap (no waiting)."""
    for label, executor in dfk.executors.items():
        proc = getattr(executor, "interchange_proc", None)
        if proc is not None and proc.poll() is not None:
            return f"Parsl's interchange of the '{label}' executor exited (code {proc.returncode})"
        if getattr(executor, "bad_state_is_set", False):
            why = " ".join(str(getattr(executor, "executor_exception", "") or "").split())
            return f"Parsl's '{label}' executor failed ({why or 'bad state'})"
        provider = getattr(executor, "provider", None)
        if type(provider).__name__ != "LocalProvider":
            continue  # a batch job's pools run elsewhere: the interchange notices them (heartbeats)
        pids = [int(job["remote_pid"]) for job in list((getattr(provider, "resources", None) or {}).values())
                if isinstance(job, dict) and job.get("remote_pid") and not job.get("cancelled")]
        if pids and not any(_running(pid) for pid in pids):
            return (f"the worker pool of Parsl's '{label}' executor (pid {', '.join(map(str, pids))}) is gone "
                    "and this site starts no other")
    return None


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def record_path(store: str | Path) -> Path:
    """Where a run of `store` records the processes it started (beside Parsl's run folders), until it ends."""
    store = Path(store)
    return store.parent / "runinfo" / f"finetuna-{store.name}.processes.json"


def _record_processes(store: Path, dfk, known: set[int] | None = None) -> set[int]:
    """Record this driver and the Parsl processes it started (interchanges, local worker pools: pid, process group,
    start time), so that a run after a hard kill of this one can end them (end_leftovers). Returns the pids
    recorded; written only when they differ from `known` (worker pools start after parsl.load returns)."""
    import json

    import psutil

    entries = []

    def add(pid: int, what: str) -> None:
        try:
            entries.append({"pid": pid, "pgid": os.getpgid(pid), "created": psutil.Process(pid).create_time(),
                            "what": what})
        except (OSError, psutil.Error):
            pass

    for executor in dfk.executors.values():
        proc = getattr(executor, "interchange_proc", None)
        if proc is not None and proc.poll() is None:
            add(proc.pid, "interchange")
        provider = getattr(executor, "provider", None)
        if type(provider).__name__ == "LocalProvider":
            for job in list((getattr(provider, "resources", None) or {}).values()):
                if isinstance(job, dict) and job.get("remote_pid"):
                    add(int(job["remote_pid"]), "worker pool")
    pids = {entry["pid"] for entry in entries}
    if known is not None and pids == known:
        return pids
    me = {"pid": os.getpid(), "created": psutil.Process().create_time(), "host": socket.gethostname()}
    target = record_path(store)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_text(json.dumps({"driver": me, "store": str(store), "processes": entries}))
        os.replace(tmp, target)
    except OSError:
        pass  # a convenience for the next run: never a reason to stop this one
    return pids


def end_leftovers(store: str | Path) -> list[str]:
    """End what a run of `store` whose driver was killed (SIGKILL, a node crash) left behind: its interchanges and
    local worker pools (Parsl #3761: they live on for many minutes) and its bridge socket files; those of that run
    only (recorded by pid, process group and start time, so a reused pid is never signalled). Returns one line
    saying what was ended, or [] (nothing recorded, or that run's driver is still alive). Raises nothing."""
    import glob
    import json

    import psutil

    target = record_path(store)
    try:
        record = json.loads(target.read_text())
        driver = int(record["driver"]["pid"])
        started = float(record["driver"]["created"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if record["driver"].get("host", socket.gethostname()) != socket.gethostname():
        return []  # a run on another machine (a shared filesystem): its processes are not here
    reused = False
    try:
        if abs(psutil.Process(driver).create_time() - started) < 1.0:
            return []  # still running: it is not ours to end
        reused = True  # another program has that pid now: its socket files (if any) are its own
    except psutil.Error:
        pass
    run_dir = str(target.parent)
    ended: dict[str, int] = {}
    for entry in record.get("processes", []):
        try:
            pid, pgid, created, what = int(entry["pid"]), int(entry["pgid"]), float(entry["created"]), entry["what"]
        except (KeyError, TypeError, ValueError):
            continue
        try:
            same = abs(psutil.Process(pid).create_time() - created) < 1.0
        except psutil.Error:
            same = False
        members = []
        if not same and what == "worker pool":  # its launcher shell is gone, the pool in its group may not be
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    if os.getpgid(proc.pid) == pgid and run_dir in " ".join(proc.info["cmdline"] or ()):
                        members.append(proc.pid)
                except (OSError, psutil.Error):
                    continue
        if not same and not members:
            continue
        try:
            if pgid != os.getpgrp():
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            ended[what] = ended.get(what, 0) + 1
        except (ProcessLookupError, PermissionError):
            pass
    sockets = [] if reused else glob.glob(f"/tmp/ipi_finetuna-{driver}-*")
    for path in sockets:
        try:
            os.unlink(path)
        except OSError:
            pass
    try:
        target.unlink()
    except OSError:
        pass
    if not ended and not sockets:
        return []
    what = " and ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(ended.items())) or "no process"
    return [f"ended {what} and removed {len(sockets)} bridge socket file{'s' if len(sockets) != 1 else ''} left by "
            f"the run of {store} whose driver (pid {driver}) was killed"]


def _shutdown_parsl(dfk, limit_s: float | None) -> None:
    """dfk.cleanup(), given at most limit_s (None: as long as it takes); with a limit, every interchange and local
    worker pool still running afterwards is killed."""
    if limit_s is None:
        try:
            dfk.cleanup()
        finally:
            parsl.clear()
        return
    worker = threading.Thread(target=dfk.cleanup, name="parsl-cleanup", daemon=True)
    worker.start()
    worker.join(limit_s)
    # Killed whether or not cleanup returned in time: on an executor that died it can return (raise in its
    # thread) before shutting down the others, leaving a live interchange that holds the driver's stdout/stderr.
    _kill_parsl_processes(dfk)
    parsl.clear()


@contextmanager
def _scripts_on_path() -> Iterator[None]:
    """This Python's scripts folder (Parsl's process_worker_pool.py and interchange.py) on PATH while Parsl runs.

    Invoked by full path (cron, a batch script, pipx), the environment's bin is not on PATH and Parsl cannot
    launch its workers; local providers and batch submissions inherit the driver's environment.
    """
    folders = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    current = os.environ.get("PATH", "")
    have = current.split(os.pathsep)
    missing = [f for f in dict.fromkeys(folders) if f and f not in have]
    if not missing:
        yield
        return
    os.environ["PATH"] = os.pathsep.join(missing + ([current] if current else []))
    try:
        yield
    finally:
        os.environ["PATH"] = current


@contextmanager
def _signals_stop(stop: StopRequest, on_second: Callable[[int], None]) -> Iterator[None]:
    """The first SIGINT/SIGTERM sets `stop` (the campaign winds down); a second calls on_second (ends the process).

    After a stop the handlers stay: a signal while the caller reports and exits also ends the process at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.signum is None:
            stop.signum = signum
            return
        on_second(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            # once stopped by a signal the process is on its way out: a later one still ends it at once
            signal.signal(sig, old if stop.signum is None else (lambda signum, frame: on_second(signum)))


def run_campaign(
    config: RunConfig,
    systems: list[SystemSpec],
    method: str = "online",
    on_progress: Callable[[Progress], None] | None = None,
    restart: bool = False,
    on_warning: Callable[[str, str], None] | None = None,
    accept_parent_change: bool = False,
) -> tuple[Path, CampaignResult]:
    """Relax `systems` with `method` on the config's site; resumes an existing store unless `restart`.

    Raises StoreError (one line) before Parsl starts when the store cannot be opened (another process holds
    it: then `restart` deletes nothing) or belongs to another campaign (store.check_same_campaign), when resuming it
    would mix parent settings (parent_change) unless accept_parent_change, or other learner or surrogate settings
    than the method's results were made with (settings_change; no accepting these), ParentSetupError when the parent's
    program is missing where the driver can tell (check_parent_program), and CampaignInterrupted when a signal
    stopped the run.
    on_warning(system_id, message) gets each warning a worker raised about a system (also stored on it).
    """
    path = store_path(config, method)
    run_dir = str(path.parent.resolve() / "runinfo")
    parsl_config = load_site(config.site, run_dir=run_dir, parent_slots=config.campaign.max_concurrent)
    check_launchable(run_dir, parsl_config)  # before anything is deleted or written
    check_parent_program(config, parsl_config)
    changed = None if restart else parent_change(path, config)
    if changed and not accept_parent_change:
        raise StoreError(
            f"store {path} was run with other parent settings ({changed}): resuming would mix both in its "
            "relaxations; run with --restart to start over, or --accept-parent-change to continue with the new ones")
    changed = None if restart else settings_change(path, config, method)
    if changed:
        raise StoreError(
            f"store {path} was run with other settings ({changed}): its finished systems would be kept and "
            f"reported under the new ones; run with --restart to start over. {_choose_store(config)}")
    try:
        if restart and path.exists():
            check_not_held(path)  # never delete a store another process has open
            _check_deletable(path)
            path.unlink()
            summary_path(path).unlink(missing_ok=True)  # the live summary of the deleted store
            shutil.rmtree(f"{path.with_suffix('')}-parent", ignore_errors=True)
        check_same_campaign(path, systems, choose=_choose_store(config))
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or full filesystem, a folder that is not ours
        raise StoreError(f"cannot {'replace' if restart else 'write'} store {path}: {exc.strerror or exc}"
                         f"{f' ({exc.filename})' if exc.filename and str(exc.filename) != str(path) else ''}") from exc
    workdir = Path(config.parent.workdir or f"{path.with_suffix('')}-parent").resolve()  # workers may run elsewhere
    config = with_overrides(config, parent={"workdir": str(workdir)})
    pause = pause_while_learning(config.parent.pause_while_learning, config.site, parsl_config)  # "auto" resolved once
    _isolate_interchanges(parsl_config)
    stop = StopRequest()
    dfk = None
    broken = False
    end_leftovers(path)  # what a killed earlier run of this store left running (the CLI says so before)

    def end_now(signum: int) -> None:  # the second signal: no more waiting on anything
        os.write(2, f"\n{signal.Signals(signum).name} again: stopped at once; the store keeps every parent call "
                    "stored so far, run the same command again to resume\n".encode())
        try:
            if dfk is not None:
                _kill_parsl_processes(dfk)
        finally:
            os._exit(128 + signum)

    with _signals_stop(stop, end_now), _scripts_on_path():
        store = CampaignStore(path, run_config=config.text, method=method,
                              keep_surrogate_every=config.campaign.keep_surrogate_every,
                              settings=effective_settings(config, method))
        try:
            if stop.signum is not None:
                raise CampaignInterrupted(stop.signum)
            dfk = parsl.load(parsl_config)
            recorded = [_record_processes(path, dfk)]

            def health() -> str | None:  # also keeps the record of our processes current
                recorded[0] = _record_processes(path, dfk, recorded[0])
                return parsl_problem(dfk)
            with naming_damage(path):  # a store damaged mid-file shows when a system is read: one line naming it
                result = Campaign(config, systems, store, method=method, on_progress=on_progress, stop=stop,
                                  on_warning=on_warning, pause_between_calls=pause,
                                  health=health).run()
        except CampaignInterrupted as exc:
            exc.path = path
            raise
        except CampaignStopped:
            broken = True  # Parsl's shutdown may wait forever on what died: bounded, then its processes killed
            raise
        finally:
            store.close()  # before Parsl's shutdown: the store is complete and unlocked whatever happens next
            if dfk is not None:
                _shutdown_parsl(dfk, SHUTDOWN_LIMIT_S if stop.signum is not None or broken else None)
                record_path(path).unlink(missing_ok=True)  # ended by itself: nothing left for the next run to end
    return path, result
