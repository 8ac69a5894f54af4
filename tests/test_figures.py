"""mixdistill.figures, the script behind the README's analysis figures."""

import json

import pytest

from mixdistill import figures


def _fake_study(folder, views=("identity", "cutmix", "cutmixpick_tent"), seeds=(0, 1)):
    """A finished wang2022 study folder as far as the script reads it: results.jsonl + tstddev.json."""
    folder.mkdir()
    rows = [{"key": "teacher/t", "labels": {"role": "teacher", "teacher": "t"},
             "summary": {"student": "t", "train_images": 600, "epochs": 3, "last_test_loss": 0.3}}]
    cache = {}
    for i, view in enumerate(views):
        method = f"view_{view}" if view == "identity" else f"kd_{view}"
        for seed in seeds:
            key = f"student/t-s/{method}/seed{seed}"
            rows.append({"key": key, "labels": {"role": "student", "pair": "t-s", "method": method, "seed": seed},
                         "summary": {"student": "s", "train_images": 100, "epochs": 2,
                                     "last_test_loss": 1.0 - 0.1 * i + 0.01 * seed}})
            cache[f"{key}/100/1"] = 0.02 - 0.002 * i
            cache[f"student/t-s/{method}/seed{seed}/100/0"] = 99.0  # an older entry of the same run: ignored
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # older entries first, as the study's cache gains them
    ordered = {k: v for k, v in cache.items() if k.endswith("/0")} | {k: v for k, v in cache.items() if k.endswith("/1")}
    (folder / "tstddev.json").write_text(json.dumps(ordered))
    return folder


def test_study_views_averages_seeds_per_view(tmp_path):
    v = figures.study_views(_fake_study(tmp_path / "study"))
    assert v["views"] == ["identity", "cutmix", "cutmixpick_tent"]
    assert v["t_stddev"] == pytest.approx([0.02, 0.018, 0.016])
    assert v["test_loss"] == pytest.approx([1.005, 0.905, 0.805])
    assert v["seeds"] == [2] and v["pairs"] == ["t-s"] and v["students"] == [("s", 100, 2)]
    path, _ = figures.plot_study_views(tmp_path / "study", tmp_path / "fig.png")
    assert path.stat().st_size > 0


@pytest.mark.slow
def test_figures_at_smoke_sizes(fmnist_root, tmp_path, capsys):
    study = _fake_study(tmp_path / "study")
    kwargs = dict(study_dir=study, data_root=str(fmnist_root), quick=True)
    made = figures.make_examples(tmp_path / "out", tmp_path / "work", **kwargs)
    assert sorted(p.name for p in made.values()) == ["reliability_diagram.png", "tsne.png",
                                                       "tstddev_vs_student_loss.png"]
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in made.values())
    record = json.loads((tmp_path / "work" / "examples.json").read_text())
    assert record["teacher"]["summary"]["student"] == "cnn5_w16"
    assert record["kd_student"]["summary"]["method"] == "kd"
    assert record["kd_student"]["summary"]["train_images"] == 300
    for role in ("teacher", "kd_student"):
        assert (tmp_path / "work" / "analysis" / role / "report.md").exists()
    capsys.readouterr()
    figures.make_examples(tmp_path / "out", tmp_path / "work", **kwargs)  # the runs are reused
    assert "2 of 2 runs already finished" in capsys.readouterr().out


def test_the_forest_plot_leaves_room_for_the_papers_direction(tmp_path, monkeypatch):
    """Every effect below zero and the paper's claim above it put the zero line at the panel's right edge, and its
    "paper →" label past the figure's (das2020's class-discrimination panel)."""
    from mixdistill.studies import common
    from mixdistill.studies.stats import Effect, Finding

    figures_made = []
    monkeypatch.setattr(common, "save_figure", lambda fig, path: figures_made.append(fig) or path)

    def finding(sign, estimate):
        effect = Effect(estimate, estimate - 0.05, min(estimate + 0.05, -0.001) if sign > 0 else estimate + 0.05,
                        0.01, "t", 5)
        return Finding(f"claim {sign}", effect, sign, "paper", unit="r")

    for sign, estimate in ((+1, -0.8), (-1, 0.5)):
        common.plot_effects([finding(sign, estimate)], tmp_path / "effects.png", "t")
        ax = figures_made[-1].axes[0]
        low, high = ax.get_xlim()
        room = (high if sign > 0 else -low) / (high - low)  # the share of the panel on the paper's side of zero
        assert room >= 0.12, (sign, low, high)
