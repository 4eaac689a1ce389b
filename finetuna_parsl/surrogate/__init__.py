"""The surrogate: a pretrained fairchem-core model with head-only online fine-tuning (torch, fairchem-core)."""

from .model import SHIPPED, SurrogateError
from .surrogate import Surrogate, SurrogateCalculator, load_surrogate

__all__ = ["SHIPPED", "Surrogate", "SurrogateCalculator", "SurrogateError", "load_surrogate"]
