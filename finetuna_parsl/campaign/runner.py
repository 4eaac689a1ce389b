"""One campaign run end to end: systems, Parsl site, store, driver; Parsl is started and stopped here."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import parsl

from ..config import RunConfig, with_overrides
from ..learner.state import SystemSpec
from ..store import CampaignStore
from .driver import Campaign, CampaignResult, Progress
from .site import load_site


def store_path(config: RunConfig, method: str) -> Path:
    """The store of `method`: the configured output for online learning, '<stem>.<method>.h5' otherwise."""
    out = Path(config.campaign.output)
    return out if method == "online" else out.with_name(f"{out.stem}.{method}{out.suffix or '.h5'}")


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (`kill`, a batch job's end) unwinds like Ctrl-C, so Parsl shuts its worker pools down.

    Without it the driver dies on the spot and the pools (learn workers hold the surrogate) outlive it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_campaign(
    config: RunConfig,
    systems: list[SystemSpec],
    method: str = "online",
    on_progress: Callable[[Progress], None] | None = None,
    restart: bool = False,
) -> tuple[Path, CampaignResult]:
    """Relax `systems` with `method` on the config's site; resumes an existing store unless `restart`."""
    path = store_path(config, method)
    if restart and path.exists():
        path.unlink()
        shutil.rmtree(f"{path.with_suffix('')}-parent", ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(config.parent.workdir or f"{path.with_suffix('')}-parent").resolve()  # workers may run elsewhere
    config = with_overrides(config, parent={"workdir": str(workdir)})
    run_dir = str(path.parent / "runinfo")
    parsl_config = load_site(config.site, run_dir=run_dir, parent_slots=config.campaign.max_concurrent)
    with CampaignStore(path, run_config=config.text, method=method,
                       keep_surrogate_every=config.campaign.keep_surrogate_every) as store:
        with _sigterm_unwinds():
            dfk = parsl.load(parsl_config)
            try:
                result = Campaign(config, systems, store, method=method, on_progress=on_progress).run()
            finally:
                dfk.cleanup()
                parsl.clear()
    return path, result
