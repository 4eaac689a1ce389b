"""One campaign run end to end: systems, Parsl site, store, driver; Parsl is started and stopped here."""

from __future__ import annotations

import shutil
from collections.abc import Callable
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
        dfk = parsl.load(parsl_config)
        try:
            result = Campaign(config, systems, store, method=method, on_progress=on_progress).run()
        finally:
            dfk.cleanup()
            parsl.clear()
    return path, result
