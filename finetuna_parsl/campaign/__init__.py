"""Campaign driver: scheduling, retries, resume and progress; the only user of the Parsl apps."""

from .driver import Campaign, CampaignInterrupted, CampaignResult, CampaignStopped, Progress
from .runner import run_campaign, store_path

__all__ = ["Campaign", "CampaignInterrupted", "CampaignResult", "CampaignStopped", "Progress", "run_campaign", "store_path"]
