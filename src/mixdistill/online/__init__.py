"""Online distillation: peers trained together from scratch, no pretrained teacher.

Every method registers into the one ``mixdistill.distill.DISTILLERS`` registry.
"""
