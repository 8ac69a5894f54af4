"""Analysis of trained models (README "Analysis"): das2020's class discrimination, calibration,
wang2022's teacher statistics, choi2023's smoothness measures and t-SNE, FGSM / PGD robustness, agreement
with human soft labels, shifted test sets, and the ``mixdistill analyze`` command (``command.py``)."""

from mixdistill.analysis.calibration import (DEFAULT_BINS, calibration, expected_calibration_error,
                                             maximum_calibration_error, negative_log_likelihood,
                                             plot_reliability_diagram, reliability_bins)
from mixdistill.analysis.data import EvalSet, human_label_kl, load_eval_set, load_human_labels, read_cifar10_1
from mixdistill.analysis.discrimination import VARIANTS, class_discrimination, zscore_unit
from mixdistill.analysis.robustness import adversarial_accuracy, fgsm, pgd
from mixdistill.analysis.smoothness import agreement, logit_std, output_entropy, plot_tsne, smoothness, tsne_embedding
from mixdistill.analysis.teacher_stats import (TStddev, correlations, entropy, plot_tstddev_vs_loss, t_stddev,
                                               teacher_statistics)

__all__ = [
    "DEFAULT_BINS",
    "EvalSet",
    "TStddev",
    "VARIANTS",
    "adversarial_accuracy",
    "agreement",
    "calibration",
    "class_discrimination",
    "correlations",
    "entropy",
    "expected_calibration_error",
    "fgsm",
    "human_label_kl",
    "load_eval_set",
    "load_human_labels",
    "logit_std",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "output_entropy",
    "pgd",
    "plot_reliability_diagram",
    "plot_tstddev_vs_loss",
    "plot_tsne",
    "read_cifar10_1",
    "reliability_bins",
    "smoothness",
    "t_stddev",
    "teacher_statistics",
    "tsne_embedding",
    "zscore_unit",
]
