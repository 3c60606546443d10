"""Every shipped YAML parses into its dataclass; typos and bad values are refused."""

from pathlib import Path

import pytest

from ctvl.config import (
    CTVLConfig,
    DistillRunConfig,
    PreprocessConfig,
    RunConfig,
    SyntheticCohortConfig,
    from_dict,
    load_config,
    save_config,
)
from ctvl.config import ClinicalTextConfig, SynthTabularRunConfig, TreatmentRunConfig
from ctvl.data.questions import QuestionSet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCHEMA = {
    "preprocess": PreprocessConfig,
    "synthetic": SyntheticCohortConfig,
    "model": CTVLConfig,
    "train": RunConfig,
    "vqa": QuestionSet,
    "clinical": ClinicalTextConfig,
    "distill": DistillRunConfig,
    "treatment": TreatmentRunConfig,
    "synth_tabular": SynthTabularRunConfig,
}


@pytest.mark.parametrize("path", sorted(p for d in SCHEMA for p in (CONFIGS / d).glob("*.yaml")), ids=str)
def test_shipped_config_parses(path, tmp_path):
    cls = SCHEMA[path.parent.name]
    cfg = load_config(cls, path)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(cls, tmp_path / "resolved.yaml") == cfg


def test_every_config_folder_has_a_schema():
    folders = {p.parent.name for p in CONFIGS.rglob("*.yaml")}
    assert folders <= set(SCHEMA), folders - set(SCHEMA)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="spacin"):
        from_dict(PreprocessConfig, {"spacin": [1, 1, 1]})


def test_nested_unknown_key_is_named():
    with pytest.raises(ValueError, match="layerz"):
        from_dict(CTVLConfig, {"vision": {"layerz": [1, 1, 1, 1]}})


@pytest.mark.parametrize("bad", [{"spacing": (1.5, 0.0, 3.0)}, {"roi_size": (224, -1, 160)}, {"hu_window": (10, -10)}])
def test_invalid_values_raise(bad):
    with pytest.raises(ValueError):
        PreprocessConfig(**bad)


def test_fingerprint_changes_with_any_field():
    base = PreprocessConfig()
    assert base.fingerprint() == PreprocessConfig().fingerprint()
    assert base.fingerprint() != PreprocessConfig(spacing=(1.5, 1.5, 2.0)).fingerprint()
    assert base.fingerprint() != PreprocessConfig(cache_dtype="float32").fingerprint()
    assert PreprocessConfig(max_voxels=1).fingerprint() == base.fingerprint()  # a limit never changes outputs
