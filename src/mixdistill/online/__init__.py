"""Online distillation: peers trained together from scratch, no pretrained teacher. Every method registers
into ``mixdistill.registry.METHODS`` beside the offline ones."""

from mixdistill.online import cutmix_online, dml, kdcl, okddip, one, pcl  # noqa: F401  (registration)
