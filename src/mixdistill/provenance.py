"""Parts of mixdistill that are reconstructions rather than reproductions, and the label every output
that used one must carry (a reconstruction is labelled so in the code, the docs and every report: README, "Online distillation")."""

from __future__ import annotations

SHEN2022_NOTE = ("cutnmix / cut_n_mix are a RECONSTRUCTION of shen2022 (Mixed Sample Augmentation for Online "
                 "Distillation) from its abstract only: no code or full text was available")

# method or augmentation name -> its label
RECONSTRUCTED = {"cutnmix": SHEN2022_NOTE, "cut_n_mix": SHEN2022_NOTE}


def reconstruction_notes(config: dict) -> list[str]:
    """The labels a run with this config (a ``RunConfig.to_dict()``-shaped dict) must carry, each once."""
    names = [(config.get(section) or {}).get("name") for section in ("method", "augment")]
    return list(dict.fromkeys(RECONSTRUCTED[n] for n in names if n in RECONSTRUCTED))
