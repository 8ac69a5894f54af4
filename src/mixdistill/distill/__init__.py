"""Offline distillers, one small class each; ``DISTILLERS`` maps config names to classes."""

from mixdistill.distill.base import Distiller, MethodParams, StepInfo, TrainSet
from mixdistill.distill.registry import DISTILLERS
from mixdistill.distill import ce, crd, das_kd, dkd, kd, kd_view, mixstd  # noqa: F401  (registration)

from mixdistill.online import cutmix_online, dml, kdcl, one  # noqa: F401,E402  (online methods)

__all__ = ["DISTILLERS", "Distiller", "MethodParams", "StepInfo", "TrainSet"]
