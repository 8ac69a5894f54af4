"""Offline distillers, one small class each, registered into ``mixdistill.registry.METHODS``."""

from mixdistill.distill import (  # noqa: F401  (registration)
    at, cc, ce, crd, das_kd, dist, dkd, fitnet, kd, kd_view, mixstd, nst, pkt, reviewkd, rkd, sp, vid)
from mixdistill.distill.base import Distiller, MethodParams, StepInfo, StepOutput, TrainSet, step_output

__all__ = ["Distiller", "MethodParams", "StepInfo", "StepOutput", "TrainSet", "step_output"]
