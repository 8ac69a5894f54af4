"""`mixdistill bench --quick`: both loops run and the JSON / Markdown report has their images/s and ratio.

No speed-up is asserted (wall-clock assertions are flaky): only structure, that every loop ran and that
its losses are finite.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from mixdistill.bench import add_bench_arguments, bench_main


def _args(argv):
    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    return p.parse_args(argv)


def test_quick_bench_writes_report(tmp_path, capsys):
    out = tmp_path / "results"
    rc = bench_main(_args(["--quick", "--device", "cpu", "--cases", "kd,kd_cutmixpick,dml",
                           "--variants", "project,eager_teacher", "--num-workers", "1", "--steps", "1", "--rounds", "1",
                           "--threads", "1",
                           "--out", str(out)]))
    assert rc == 0
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out}/bench_quick_cpu.json and {out}/bench_quick_cpu.md")
    report = json.loads((out / "bench_quick_cpu.json").read_text())
    md = (out / "bench_quick_cpu.md").read_text()
    assert report["settings"]["quick"] and report["settings"]["batch_size"] == 64
    assert [r["case"] for r in report["results"]] == ["kd", "kd_cutmixpick", "dml"]
    for r in report["results"]:
        expected = {"reference", "project"} | ({"eager_teacher"} if r["case"] != "dml" else set())
        assert set(r["loops"]) == expected
        for name, loop in r["loops"].items():
            assert "error" not in loop, (r["case"], name, loop.get("error"))
            assert len(loop["rounds_images_per_s"]) == report["settings"]["rounds"]
            assert loop["images_per_s"] > 0 and math.isfinite(loop["last_loss"]), (r["case"], name)
        assert set(r["ratio"]) == expected - {"reference"}
        assert all(v > 0 for v in r["ratio"].values())
        assert r["label"] in md
    kd = report["results"][0]["loops"]
    assert kd["project"]["teacher"]["folded_pairs"] > 0 and kd["project"]["teacher"]["channels_last"]
    assert "teacher" not in kd["eager_teacher"]  # train.fast_teacher=false: the teacher is left as loaded
    assert "cnn5_w16-cnn5_w8 vs KD" in report["pick_cost"]
    assert "| reference |" in md and "x |" in md
    _check_step_work(report)


def _check_step_work(report):
    """The FLOP count of each loop's step is the sum of its network passes, counted here pass by pass: KD is one
    teacher forward and one student forward+backward per image; KD+CutMixPick is a teacher forward on the clean
    batch and on the 2B pool, a no-grad student forward on the pool and a student forward+backward on the clean
    and the picked batch, with the pool's teacher logits reused for the picked images (a fourth teacher pass
    would add one teacher forward per image); DML is three peers' forward+backward."""
    from mixdistill.bench import step_flops
    from mixdistill.models import create_model

    teacher, student = create_model("cnn5_w16", 100).eval(), create_model("cnn5_w8", 100).train()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        t_fwd = step_flops(lambda: teacher(x)) / 8
        s_fwd = step_flops(lambda: student(x)) / 8
    s_train = step_flops(lambda: student(x).sum().backward()) / 8
    assert t_fwd > 0 and s_fwd < s_train < 3 * s_fwd + 1  # backward skips the input's gradient
    expected = {"kd": t_fwd + s_train, "kd_cutmixpick": 3 * t_fwd + 2 * s_fwd + 2 * s_train, "dml": 3 * s_train}
    for r in report["results"]:
        assert set(r["flops_per_image"]) == set(r["loops"])  # all uncompiled fp32 loops were counted
        for loop, flops in r["flops_per_image"].items():
            assert flops == pytest.approx(expected[r["case"]], rel=1e-9), (r["case"], loop)
        assert r["gflop_per_s"]["project"] == pytest.approx(
            r["flops_per_image"]["project"] * r["loops"]["project"]["images_per_s"] / 1e9)
    work = report["pick_work"]["cnn5_w16-cnn5_w8 vs KD"]["project"]
    assert work == pytest.approx(expected["kd_cutmixpick"] / expected["kd"])


def test_bench_rejects_unknown_names(tmp_path):
    from mixdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown case 'kdd' \(choose from .*, grid\)"):  # every case it takes
        bench_main(_args(["--quick", "--device", "cpu", "--cases", "kdd", "--out", str(tmp_path)]))


def test_fold_conv_bn_and_int8_teacher_match_fp32():
    from mixdistill.engine.fast import fold_conv_bn, quantize_int8, teacher_agreement
    from mixdistill.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn5_w8", num_classes=10, in_channels=1).eval()
    with torch.no_grad():  # non-trivial BN statistics so that folding has something to fold
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(16, 1, 28, 28)
    folded, pairs = fold_conv_bn(model)
    assert pairs == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    q = quantize_int8(folded, [torch.randn(16, 1, 28, 28) for _ in range(2)])
    agree = teacher_agreement(model, q, [x])
    assert agree["images"] == 16 and math.isfinite(agree["max_abs_logit_diff"])


def test_accelerate_teacher_swaps_teacher_only():
    from mixdistill.engine.fast import InferenceTeacher, accelerate_teacher
    from mixdistill.engine.runtime import resolve_runtime
    from mixdistill.methods import METHODS
    from mixdistill.models import create_model

    torch.manual_seed(0)
    cls = METHODS["kd"]
    d = cls(create_model("cnn5_w8", 10, 1), create_model("cnn5_w16", 10, 1), cls.Params())
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = d.teacher_logits(x)
    student_keys = set(d.student.state_dict())
    params_before = [id(p) for p in d.learnable_parameters()]
    report = accelerate_teacher(d, resolve_runtime("cpu", "fp32", False, False), check_batches=[x])
    assert isinstance(d.teacher, InferenceTeacher) and not d.teacher.training
    d.train()
    assert not d.teacher.training
    assert report.folded_pairs == 5 and report.agreement["top1_agreement_pct"] == 100.0
    torch.testing.assert_close(d.teacher_logits(x), before, rtol=1e-4, atol=1e-4)
    assert set(d.student.state_dict()) == student_keys
    assert [id(p) for p in d.learnable_parameters()] == params_before


class _GraphStandIn(torch.nn.Module):
    """Stands in for a net replayed as a CUDA graph: its output lives in memory that the next replay of any graph
    sharing ``pool`` overwrites (here: zeroes)."""

    def __init__(self, net, pool: dict):
        super().__init__()
        self.net, self.pool = net, pool

    def forward(self, x):
        if "out" in self.pool:
            with torch.inference_mode():  # the teacher's output is an inference tensor
                self.pool["out"].zero_()
        self.pool["out"] = self.net(x).detach()
        return self.pool["out"]


@pytest.mark.parametrize("graphs", [True, False])
def test_a_teacher_replaying_cuda_graphs_hands_out_copies_that_later_replays_leave_alone(graphs):
    """CutMixPick reads the pool's teacher logits after the student's graph has replayed (on an H200 that failed:
    the teacher graph's output was overwritten). The graph teacher returns a copy; ``graphs=False`` shows that the
    stand-in does overwrite (the test can fail)."""
    from mixdistill.augment.pick import cutmix_pick
    from mixdistill.engine.fast import InferenceTeacher
    from mixdistill.models import create_model

    torch.manual_seed(0)
    pool: dict = {}
    net = create_model("cnn5_w16", 10, 1).eval()
    teacher = InferenceTeacher(net, compiled=_GraphStandIn(net, pool), graphs=graphs)
    student = _GraphStandIn(create_model("cnn5_w8", 10, 1), pool)
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    mixed = cutmix_pick(images, labels, teacher=teacher, student=student,
                        generator=torch.Generator().manual_seed(0), criterion="kl", n_runs=2)
    with torch.inference_mode():
        replayed = net(mixed.images)
    assert torch.equal(mixed.teacher_logits, replayed) == graphs


def test_bench_command_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from mixdistill.cli import main

    assert main(["bench", "--quick", "--device", "cpu", "--pairs", "resnet33-resnet8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown pair 'resnet33-resnet8'" in err[0]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv, why", [
    (["--precision", "foo"], "train.precision: Input should be"),  # each was a "failed" column and exit 0
    (["--compile", "maybe"], "train.compile: expected true, false or auto"),
    (["--precision", "fp16"], "train.precision=fp16 is for CUDA GPUs"),
    (["--threads", "0"], "--threads must be at least 1"),  # 0 was ignored, -1 a traceback
    (["--num-workers", "-1"], "--num-workers must be at least 0"),
    (["--cases", ","], "--cases names no case"),  # an empty report
    (["--tag", "../x"], "--tag '../x' is a file name suffix"),  # wrote outside --out
])
def test_bench_options_are_checked_before_anything_is_timed(argv, why, tmp_path, capsys):
    from mixdistill.cli import main

    assert main(["bench", "--quick", "--device", "cpu", "--cases", "kd", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0], err
    assert not list(tmp_path.rglob("*.json"))


def test_bench_keeps_an_earlier_benchs_results_unless_told_to_replace_them(tmp_path, capsys, monkeypatch):
    from mixdistill.cli import main

    (tmp_path / "bench_quick_cpu.md").write_text("earlier\n")
    argv = ["bench", "--quick", "--device", "cpu", "--cases", "kd", "--variants", "project", "--steps", "1",
            "--rounds", "1", "--warmup", "0", "--num-workers", "0", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "holds an earlier bench's results: pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "bench_quick_cpu.md").read_text() == "earlier\n"
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun each rank timed its loops into the same files
    assert main(argv + ["--overwrite"]) == 2 and "not under torchrun" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    assert main(argv + ["--overwrite"]) == 0 and (tmp_path / "bench_quick_cpu.md").read_text() != "earlier\n"
    out = capsys.readouterr().out
    assert "| against the reference: project " in out  # the console's ratio says what it is a ratio of
    monkeypatch.chdir(tmp_path)  # runs/bench, the default folder, is scratch: the README's quick line runs again
    default = [a for a in argv if a not in ("--out", str(tmp_path))]
    assert main(default) == 0 and main(default) == 0 and (tmp_path / "runs" / "bench" / "bench_quick_cpu.md").exists()
    assert "1 timing round: each ratio is the median of that many per-round ratios" in out


def test_a_grid_case_not_measured_is_a_row_of_the_report():
    """It had no pair: the report's markdown ended in a KeyError (CUDA, or past the time budget)."""
    from mixdistill.bench.steps import to_markdown

    report = {"machine": {"cpu": "x", "cpu_count": 2, "cpu_capability": "AVX2", "cpu_native_bf16": False,
                          "reference_num_workers": 0, "torch": "2"},
              "settings": {"device": "cuda", "batch_size": 64, "steps": 1, "rounds": 1, "warmup": 0},
              "results": [], "not_measured": [{"case": "grid", "why": "the grid case is a CPU case"},
                                              {"case": "kd", "pair": "a-b", "why": "time budget"}]}
    md = to_markdown(report)
    assert "| grid | - | not measured (the grid case is a CPU case) |" in md
    assert "| KD | a-b | not measured (time budget) |" in md


def test_cpu_only_variants_refuse_cuda(tmp_path):
    from mixdistill.bench import CPU_VARIANTS, ProjectLoop

    assert set(CPU_VARIANTS) == {"int8", "compile", "int8_compile"}
    for variant in CPU_VARIANTS:
        with pytest.raises(ValueError, match=f"{variant} is a CPU variant"):
            ProjectLoop("kd", variant, "cnn5_w16", "cnn5_w8", data_root=tmp_path, teacher_ckpt=None,
                        run_root=tmp_path, batch_size=8, device="cuda", args=_args([]), seed=0)


@pytest.mark.slow
@pytest.mark.needs_cxx
def test_quick_bench_compile_variants_run_compiled(tmp_path):
    out = tmp_path / "results"
    rc = bench_main(_args(["--quick", "--device", "cpu", "--cases", "kd,dml", "--variants", "compile,int8_compile",
                           "--num-workers", "1", "--steps", "1", "--rounds", "1", "--threads", "1",
                           "--out", str(out)]))
    assert rc == 0
    kd, dml = json.loads((out / "bench_quick_cpu.json").read_text())["results"]
    assert set(kd["loops"]) == {"reference", "compile", "int8_compile"}
    assert set(dml["loops"]) == {"reference", "compile"}  # int8_compile needs a teacher
    for r in (kd, dml):
        for name, loop in r["loops"].items():
            assert "error" not in loop, (r["case"], name, loop.get("error"))
            assert math.isfinite(loop["last_loss"])
    assert kd["loops"]["compile"]["teacher"]["compiled"] and not kd["loops"]["compile"]["teacher"]["int8"]
    assert kd["loops"]["int8_compile"]["teacher"]["int8"]


@pytest.mark.parametrize("argv, message", [
    (["bench", "--quick", "--device", "cpu", "--cases", "kd", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["bench", "--quick", "--device", "cpu", "--cases", "kd", "--rounds", "-1"], "--rounds must be at least 1"),
    (["demo", "--quick", "--seeds", "0"], "--seeds must be at least 1"),
    (["study", "wang2022", "--scale", "smoke", "--seeds", "-1"], "--seeds must be at least 1"),
])
def test_counts_below_one_are_one_line_exit_2(tmp_path, capsys, argv, message):
    from mixdistill.cli import main

    out_flag = ["--out", str(tmp_path)] if argv[0] == "bench" else ["--output-dir", str(tmp_path / "runs")]
    assert main(argv + out_flag) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow
def test_the_grid_case_counts_the_longest_time_a_run_spent_on_the_shared_table():
    from mixdistill.bench.grid import grid_markdown, table_seconds

    def row(built_s, waited_s):
        return {"summary": {"teacher_views": {"built_s": built_s, "waited_s": waited_s}}}

    rows = [row(5.0, 0.25), row(5.5, 0.0), row(0.0, 0.0), {"summary": {"teacher_views": None}}]
    assert table_seconds(rows) == 5.5 and table_seconds(rows[:1]) == 5.25
    assert table_seconds([{"summary": {}}]) == 0.0 and table_seconds([]) == 0.0
    report = {"runs": 4, "pair": "a -> b", "steps_per_run": 10, "rounds": 2, "ratio": 2.0, "ratio_range": [1.9, 2.1],
              "seconds": {"one_at_a_time": [8.0, 8.2], "grid": [4.0, 4.1]},
              "runs_per_hour": {"one_at_a_time": 1, "grid": 2}}
    assert not any("teacher table" in line for line in grid_markdown(report))  # a report from before table_s
    lines = grid_markdown({**report, "table_s": [5.5, 5.0]})
    assert any("teacher table" in line and "5.5 / 5.0 s" in line for line in lines)


def test_grid_case_times_both_ways_of_running_a_grid(tmp_path):
    out = tmp_path / "results"
    assert bench_main(_args(["--quick", "--device", "cpu", "--cases", "grid", "--grid-runs", "2", "--grid-epochs", "1",
                             "--grid-rounds", "1", "--precision", "fp32", "--out", str(out)])) == 0
    grid = json.loads((out / "bench_quick_cpu.json").read_text())["grid"]
    assert grid["runs"] == 2 and grid["steps_per_run"] == 23 and grid["precision"] == "fp32"
    assert all(len(s) == 1 and s[0] > 0 for s in grid["seconds"].values())
    assert grid["ratio"] == pytest.approx(grid["seconds"]["one_at_a_time"][0] / grid["seconds"]["grid"][0])
    # the ceiling: min(cores, runs) 1-thread runs at once against one run at a time, from the run timed alone
    assert grid["side_by_side"] == min(grid["cores"], 2)
    assert grid["table_s"] == [0.0]  # 2 runs of 1 epoch do not repay a table of 50 views
    assert grid["ceiling"] == pytest.approx(grid["side_by_side"] * grid["seconds"]["one_at_a_time"][0] / 2
                                            / grid["seconds"]["alone_1thread"][0])
    assert "Ceiling of running side by side" in (out / "bench_quick_cpu.md").read_text()
    assert "runs per hour" in (out / "bench_quick_cpu.md").read_text()


def test_machine_peak_bounds_the_ratio_in_the_report():
    """The bench measures the device's dense-kernel peak per precision and reports peak / the reference's
    rate: the most a loop doing the reference's counted work in that precision can gain."""
    from mixdistill.bench.steps import machine_peak, work_lines

    peak = machine_peak(torch.device("cpu"), ["fp32", "bf16"], repeats=1)
    assert set(peak) == {"fp32", "bf16"}
    assert set(peak["fp32"]) == {"gflop_per_s", "threads", "conv3x3_gflop_per_s", "matmul_gflop_per_s"}
    # native-bf16 detection is off in the tests: bf16 counts as emulated, so only its convolution is timed
    assert set(peak["bf16"]) == {"gflop_per_s", "threads", "conv3x3_gflop_per_s"}
    for p in peak.values():
        assert p["gflop_per_s"] == max(v for k, v in p.items() if k.endswith("_gflop_per_s") and k != "gflop_per_s") > 0
        assert p["threads"] == torch.get_num_threads()
    report = {"machine_peak": {"fp32": {"gflop_per_s": 150.0, "threads": 2},
                               "bf16": {"gflop_per_s": 450.0, "threads": 2}},
              "project_precision": "bf16", "machine": {},
              "results": [{"label": "KD", "pair": "resnet32x4-resnet8x4", "flops_per_image": {"reference": 3e9},
                           "gflop_per_s": {"reference": 90.0, "project": 300.0}}]}
    text = "\n".join(work_lines(report, ["project"]))
    assert "fp32 150 GFLOP/s, bf16 450 GFLOP/s" in text and "KD resnet32x4-resnet8x4 5.00x" in text


@pytest.mark.checkout
def test_accuracy_check_reports_each_loop_against_the_reference_paired_by_seed():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_check.py"
    spec = importlib.util.spec_from_file_location("accuracy_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    runs = {"reference": [{"seed": s, "acc": a} for s, a in zip((0, 1, 2), (80.0, 82.0, 81.0))],
            "project": [{"seed": s, "acc": a} for s, a in zip((0, 1, 2), (80.5, 81.5, 82.0))]}
    report = {"teacher_acc": 87.0, "steps": 400, "epochs": 2, "subset": 12800, "seeds": [0, 1, 2], "torch": "x",
              "runs": runs, "summary": {v: {"mean": sum(r["acc"] for r in rs) / 3, "std": 1.0,
                                           "accs": [r["acc"] for r in rs]} for v, rs in runs.items()}}
    lines = check.markdown(report, argparse.Namespace(teacher_epochs=1))
    row = next(line for line in lines if line.startswith("| project |"))
    # differences +0.5, -0.5, +1.0: mean +0.33, sd 0.76, t(2) 4.303 -> half-width 1.90
    assert "+0.33 [-1.56, +2.23]" in row and "| reference | 81.00 ± 1.00 | - |" in "\n".join(lines)


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.checkout
def test_cpu_session_names_the_kind_and_its_commands_parse():
    from mixdistill.bench.steps import CASES, VARIANTS, add_bench_arguments
    from mixdistill.cli import build_parser
    from mixdistill.engine.runtime import cpu_has_native_bf16

    session = _load_script("cpu_session")
    kind = session.cpu_kind()
    assert kind in ("avx2", "avx512bf16", "amx") and (kind != "avx2") == cpu_has_native_bf16()
    plan = session.commands(kind, out="OUT")
    assert list(plan) == list(session.STEPS)
    bench = argparse.ArgumentParser()
    add_bench_arguments(bench)
    for step in ("bench", "grid"):
        assert plan[step][1:4] == ["-m", "mixdistill", "bench"]
        args = bench.parse_args(plan[step][4:])
        assert args.device == "cpu" and args.out == "OUT" and args.tag.startswith(f"cpu_{kind}")
        assert set(args.cases.split(",")) <= {*CASES, "grid"} and set(args.variants.split(",")) <= {"auto", *VARIANTS}
    accuracy = _load_script("accuracy_check")
    args = accuracy.build_parser().parse_args(plan["accuracy"][2:])
    assert set(args.variants.split(",")) <= {"reference", *accuracy.VARIANT_OVERRIDES} and args.tag == kind
    study = build_parser().parse_args(session.study_command(kind, "wang2022")[3:])
    assert (study.name, study.scale) == ("wang2022", "cpu")


@pytest.mark.checkout
def test_cpu_session_reports_a_failed_step_and_runs_the_next(tmp_path, monkeypatch, capsys):
    import sys

    session = _load_script("cpu_session")
    fail = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    ok = [sys.executable, "-c", "print('fine')"]
    monkeypatch.setattr(session, "ROOT", tmp_path)
    monkeypatch.setattr(session, "commands", lambda kind, out="docs/results": {"bench": fail, "grid": ok})
    assert session.main(["run", "--only", "bench,grid"]) == 1
    out = capsys.readouterr().out
    assert "== bench: exit 3" in out and "== grid: exit 0" in out and "failed: bench" in out
    logs = tmp_path / "runs" / f"cpu_session_{session.cpu_kind()}"
    assert (logs / "bench.log").read_text() == "boom\n" and (logs / "grid.log").read_text() == "fine\n"
    with pytest.raises(SystemExit):
        session.main(["run", "--only", "bench,nope"])
    (tmp_path / "runs" / f"studies_{session.cpu_kind()}" / "wang2022_cpu").mkdir(parents=True)
    assert session.main(["study", "wang2022"]) == 2  # finished runs would be reused: not a time from scratch
    assert "move it away" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.checkout
def test_the_prepared_gpu_session_runs_its_steps(tmp_path):
    """``gpu_session.sh check`` runs the GPU session's own steps (bench, synthetic CIFAR-100, two epochs of the
    CRD protocol, the step profiler) on the CPU at toy size: a lent GPU must not be spent finding that a step broke."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    root = Path(__file__).resolve().parents[1]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # python3 = this interpreter
    env = dict(os.environ, PATH=path, TMPDIR=str(tmp_path))
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_session.sh"), "check", str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "bench_cuda_session.json").read_text())
    assert report["results"][0]["loops"]["project"]["images_per_s"] > 0
    epochs = [json.loads(line) for line in (out / "full_run_metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and "test_acc" in epochs[-1]
    log = (out / "session.log").read_text()
    assert "no CUDA device" in log and "profile_step.py" in log and "step failed" not in log
    assert json.loads((out / "profile_cpu.json").read_text())["loops"]["project"]["wall_ms"] > 0
    assert len(list(out.iterdir())) <= 8  # a lent machine sends back at most eight files


@pytest.mark.checkout
def test_the_step_profiler_profiles_the_reference_and_a_project_loop(tmp_path):
    profile_step = _load_script("profile_step")
    assert profile_step.main(["--device", "cpu", "--pair", "cnn5_w16-cnn5_w8", "--variants", "project", "--steps", "1",
                              "--warmup", "1", "--compile", "false", "--out", str(tmp_path)]) == 0
    loops = json.loads((tmp_path / "profile_cpu.json").read_text())["loops"]
    assert set(loops) == {"reference", "project"} and "error" not in loops["project"]
    assert all(loop["wall_ms"] > 0 and loop["top_self_cpu_ms"] for loop in loops.values())


def test_the_evaluation_chunk_benchmark_times_both_ways_and_compares_their_metrics(capsys):
    eval_chunks = _load_script("eval_chunks")
    assert eval_chunks.main(["--nets", "cnn5_w8", "--threads", "1", "--images", "300", "--batch-size", "200",
                             "--rounds", "1"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[:3] == ["1", "cnn5_w8", "300"] and float(row[3]) > 0 and float(row[4]) > 0
    assert row[-2] == "yes" and float(row[-1]) < 1e-6  # chunked evaluation: the metrics of whole batches


@pytest.mark.checkout
def test_the_relu_after_pool_benchmark_times_both_orders_and_checks_they_agree(capsys, monkeypatch):
    bench = _load_script("relu_after_pool")
    bench.main(["--rounds", "1", "--batch-size", "4", "--precision", "fp32", "--kd-runs", "1", "--kd-epochs", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| network")]
    assert [r.split(" | ")[0][2:] for r in rows] == list(bench.NETS)
    assert "whole KD run (23 steps, 1 thread(s), eager), 1 rounds" in out and "both ways" in out

    from mixdistill.models import cnn
    pooled = cnn._pooled
    monkeypatch.setattr(cnn, "_pooled",
                        lambda block, pool, x, maps, after: pooled(block, pool, x, maps, after) * (1 + after))
    with pytest.raises(SystemExit, match="cnn5_w8: the two orders differ"):
        bench.main(["--rounds", "1", "--batch-size", "4", "--precision", "fp32"])


@pytest.mark.parametrize("kernel,wrong_function,wrong_output,tables", [
    ("small_bn", "small_bn_forward", 1, 2),  # the first output value; a table for 1 and 2 threads
    ("small_pool", "small_pool_backward", 2, 1),  # the first input gradient
    ("small_conv", "small_conv_forward", 3, 1),  # the first output value
])
def test_the_kernel_benchmarks_time_both_kernels_and_check_they_agree(kernel, wrong_function, wrong_output, tables,
                                                                     capsys, monkeypatch, kernel_wrappers):
    import importlib

    module = importlib.import_module(f"mixdistill.engine.{kernel}")
    monkeypatch.setattr(module, "_checked", set())
    bench = _load_script(kernel)
    if module.status() != "on":  # ATen's AVX2 kernels or no C compiler: the script says so and stops
        with pytest.raises(SystemExit, match="nothing to time"):
            bench.main(["--rounds", "1"])
        return
    bench.main(["--rounds", "1", "--batch-size", "4", "--kd-runs", "1", "--kd-epochs", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    assert [r.split(" | ")[0][2:].split(" (")[0] for r in rows] == [name for name, _, _ in bench.LAYERS] * tables
    assert "whole KD run (23 steps, 1 thread(s), eager), 1 rounds" in out and "both ways" in out

    wrong = kernel_wrappers.one_bit_off(module._library()[0], wrong_function, wrong_output)
    monkeypatch.setattr(module, "_library", lambda: (wrong, ""))
    with pytest.raises(SystemExit, match="the kernels differ"):
        bench.main(["--rounds", "1", "--batch-size", "4"])


@pytest.mark.slow
@pytest.mark.checkout
def test_grid_filed_day_times_the_filed_day_code_beside_todays_grid(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    script = _load_script("grid_filed_day")
    if subprocess.run(["git", "-C", str(script.REPO), "cat-file", "-e", f"{script.FILED_ON}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"this checkout's history lacks {script.FILED_ON} (a shallow clone)")
    monkeypatch.setattr(sys, "argv", ["grid_filed_day", "--rounds", "1", "--runs", "1", "--epochs", "1", "--tag", "t",
                                      "--out", str(tmp_path)])
    script.main()
    report = json.loads((tmp_path / "grid_filed_day_t.json").read_text())
    assert set(report["seconds"]) == {"filed_day", "one_at_a_time", "grid"}
    assert all(len(s) == 1 and s[0] > 0 for s in report["seconds"].values())
    seconds = report["seconds"]
    assert report["ratio"]["filed_day"] == pytest.approx(seconds["filed_day"][0] / seconds["grid"][0])
    text = (tmp_path / "grid_filed_day_t.md").read_text()
    assert f"code of {script.FILED_ON}" in text and f"grid / filed_day: **{report['ratio']['filed_day']:.2f}x**" in text


def test_a_case_releases_its_run_folders_even_while_its_loops_live_on(tmp_path, monkeypatch):
    """The bench's later loops (the CUDA sync check) reuse run names; a trainer kept alive after its case (by
    compiled graphs, on a GPU: the H200 session's sync check found its folder locked) must not keep its lock."""
    from mixdistill.bench import steps
    from mixdistill.engine import run

    kept = []

    class KeptLoop(steps.ProjectLoop):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            kept.append(self)

    claimed = []

    def claim_after_the_cases(results, pick_cost=steps.pick_cost):  # runs after the cases, before the sync check
        for loop in kept:
            with run.claim(loop.trainer.run_dir, "a later loop of the same name"):
                claimed.append(loop.trainer.run_dir.name)
        return pick_cost(results)

    monkeypatch.setattr(steps, "ProjectLoop", KeptLoop)
    monkeypatch.setattr(steps, "pick_cost", claim_after_the_cases)
    assert bench_main(_args(["--quick", "--device", "cpu", "--cases", "kd", "--variants", "project", "--steps", "1",
                             "--rounds", "1", "--num-workers", "0", "--threads", "1",
                             "--out", str(tmp_path / "out")])) == 0
    assert claimed == ["bench_kd_project"]
