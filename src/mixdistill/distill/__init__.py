"""Offline distillers, one small class each; ``DISTILLERS`` maps config names to classes."""

from mixdistill.distill.base import Distiller, MethodParams, StepInfo, TrainSet
from mixdistill.distill.registry import DISTILLERS
from mixdistill.distill import ce, das_kd, kd, kd_view, mixstd  # noqa: F401  (registration)

__all__ = ["DISTILLERS", "Distiller", "MethodParams", "StepInfo", "TrainSet"]
