"""Offline distillers, one small class each, registered into ``mixdistill.registry.METHODS``."""

from mixdistill.distill import ce, crd, das_kd, dkd, kd, kd_view, mixstd  # noqa: F401  (registration)
from mixdistill.distill.base import Distiller, MethodParams, StepInfo, StepOutput, TrainSet, step_output

__all__ = ["Distiller", "MethodParams", "StepInfo", "StepOutput", "TrainSet", "step_output"]
