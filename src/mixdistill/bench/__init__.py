"""``mixdistill bench``: the training step against a standard reference loop (``steps``), and runs per hour of
a study-scale grid (``grid``)."""

from mixdistill.bench.steps import (CPU_VARIANTS, ProjectLoop, add_bench_arguments, bench_main, main, pick_cost,
                                    pick_work, step_flops, work_lines)

__all__ = ["CPU_VARIANTS", "ProjectLoop", "add_bench_arguments", "bench_main", "main", "pick_cost", "pick_work",
           "step_flops", "work_lines"]
