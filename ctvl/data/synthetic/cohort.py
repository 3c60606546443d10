"""Synthetic chest-CT cohort with known findings, known reports and a known survival truth.

No real CT can be downloaded in CI, yet a pipeline (HU handling, preprocessing, VQA extraction from
reports, survival training) needs data whose truth is known. Each case gets findings for the six
questions of the core paper (:mod:`ctvl.data.synthetic.findings`), a chest drawn in Hounsfield units
(:mod:`ctvl.data.synthetic.phantom`), a CT-RATE style report (:mod:`ctvl.data.synthetic.reports`) and,
from this module, clinical covariates, a clinical stage (the true TNM with staging error) and a
proportional-hazards survival time.

Survival truth (module constants ``W_IMAGE``, ``W_CLINICAL``, ``WEIBULL_*``):

.. math::
    \eta_i = w_{img}^\top f(\text{findings}_i) + \lambda_{clin}\, w_{clin}^\top g(\text{clinical}_i),
    \qquad T_i = \sigma \left(-\log U_i\; e^{-\eta_i}\right)^{1/k}

(Weibull proportional hazards by inverse-CDF sampling, Bender et al., Stat. Med. 24:1713, 2005),
with independent exponential censoring whose rate is solved so that the expected censored
fraction equals ``censoring_rate`` (both from :mod:`ctvl.survival.simulate`). Both linear predictors
are centred and have a population SD of ~1.5, so ``clinical_weight`` is the ratio of clinical to
imaging signal.

Entry points:
    >>> from ctvl.config import SyntheticCohortConfig
    >>> df, findings = make_cohort(SyntheticCohortConfig(n_cases=4, shape=(32, 32, 32), spacing=(10, 10, 10)))
    >>> make_case_volume(SyntheticCohortConfig(shape=(32, 32, 32), spacing=(10, 10, 10)), findings[0]).dtype
    dtype('int16')

:func:`ctvl.data.synthetic.files.write_cohort` writes a cohort in the CT-RATE layout (volumes, reports,
metadata) plus a survival manifest and the ground-truth findings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ctvl.config import SyntheticCohortConfig
from ctvl.data.synthetic.findings import EFFUSION_SIZES, Findings, compute_stage, compute_tnm, make_findings
from ctvl.data.synthetic.phantom import make_volume
from ctvl.data.synthetic.reports import make_report
from ctvl.survival.metrics import harrell_c
from ctvl.survival.simulate import compute_censoring, compute_ph_event_times

SMOKING = ("never", "former", "current")

W_IMAGE = {"tumour_cm": 0.35, "n_stage": 0.47, "metastatic_sites": 1.12,
           "effusion_grade": 0.41, "vessel_involvement": 0.70, "pleural_thickening": 0.47}
"""Log-hazard per unit of each imaging feature f(findings) (see :func:`compute_image_features`)."""
W_CLINICAL = {"age_decades": 1.10, "male": 0.59, "former_smoker": 0.66, "current_smoker": 1.32, "ecog": 1.39}
"""Log-hazard per unit of each clinical feature g(clinical); multiplied by ``clinical_weight``."""
IMAGE_MEAN, CLINICAL_MEAN = 2.23, 2.30
"""Population means of the two linear predictors (Monte-Carlo, n = 10^5), subtracted to centre them."""
WEIBULL_SCALE_MONTHS, WEIBULL_SHAPE = 20.0, 1.2
"""Baseline Weibull scale sigma (months) and shape k: S_0(t) = exp(-(t / sigma)^k)."""


def make_case_volume(cfg: SyntheticCohortConfig, findings: Findings) -> np.ndarray:
    """The exact volume :func:`ctvl.data.synthetic.files.write_cohort` writes for ``findings``.

    Its noise stream is ``(cfg.seed, findings.index, 1)``.
    """
    rng = np.random.default_rng([cfg.seed, findings.index, 1])
    return make_volume(findings, cfg.shape, cfg.spacing, rng=rng)


# ----------------------------------------------------------------------------- clinical + survival truth


def make_clinical(rng: np.random.Generator) -> dict:
    """Age (years), sex ("M" | "F"), smoking (never | former | current) and ECOG performance status (0-2)."""
    return {"age": int(np.clip(round(rng.normal(66.0, 9.0)), 35, 90)),
            "sex": "M" if rng.random() < 0.55 else "F",
            "smoking": SMOKING[rng.choice(3, p=(0.15, 0.45, 0.40))],
            "ecog": int(rng.choice(3, p=(0.4, 0.45, 0.15)))}


def _misstage(rng: np.random.Generator, tnm: tuple[int, int, int]) -> tuple[int, int, int]:
    """Clinical staging error: T and N each off by one with p = 0.3, M flipped with p = 0.1.

    Noisy enough that stage alone does not recover the imaging signal (clinical-only Cox reaches
    C ~0.70 at ``clinical_weight=0`` where the oracle reaches ~0.80).
    """
    t, n, m = tnm
    t = int(np.clip(t + rng.choice([-1, 1]), 0, 4)) if rng.random() < 0.3 else t
    n = int(np.clip(n + rng.choice([-1, 1]), 0, 3)) if rng.random() < 0.3 else n
    return t, n, 1 - m if rng.random() < 0.1 else m


def compute_image_features(f: Findings) -> dict[str, float]:
    """f(findings): the imaging features of the true log-hazard (keys of ``W_IMAGE``)."""
    grade = 0 if f.effusion_size is None else 1 + EFFUSION_SIZES.index(f.effusion_size)
    return {"tumour_cm": (f.tumour_size_mm or 0) / 10.0, "n_stage": float(compute_tnm(f)[1]),
            "metastatic_sites": float(len(f.metastatic_sites)), "effusion_grade": float(grade),
            "vessel_involvement": float(f.vessel_involved is not None),
            "pleural_thickening": float(f.pleural_thickening_side is not None)}


def compute_clinical_features(clinical: dict) -> dict[str, float]:
    """g(clinical): the clinical features of the true log-hazard (keys of ``W_CLINICAL``)."""
    return {"age_decades": (clinical["age"] - 65.0) / 10.0, "male": float(clinical["sex"] == "M"),
            "former_smoker": float(clinical["smoking"] == "former"),
            "current_smoker": float(clinical["smoking"] == "current"), "ecog": float(clinical["ecog"])}


def compute_log_hazard(f: Findings, clinical: dict, clinical_weight: float) -> tuple[float, float]:
    r"""Centred image and clinical parts of the true log-hazard.

    .. math::
        \eta = \underbrace{w_{img}^\top f - \bar\eta_{img}}_{\text{image}}
             + \lambda_{clin} \underbrace{(w_{clin}^\top g - \bar\eta_{clin})}_{\text{clinical}}

    Returns:
        (image part, clinical part times ``clinical_weight``); their sum is ``true_log_hazard``.
    """
    image = sum(W_IMAGE[k] * v for k, v in compute_image_features(f).items()) - IMAGE_MEAN
    clin = sum(W_CLINICAL[k] * v for k, v in compute_clinical_features(clinical).items()) - CLINICAL_MEAN
    return float(image), float(clinical_weight * clin)


# ----------------------------------------------------------------------------- cohort


def _case_names(n_cases: int, validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split and CT-RATE volume stem per case (``train_{k}_a_1`` / ``valid_{k}_a_1``, k from 1)."""
    if not 0.0 <= validation_fraction <= 1.0:
        raise ValueError(f"`validation_fraction` must be in [0, 1], got {validation_fraction}")
    n_val = int(round(validation_fraction * n_cases))
    is_val = np.zeros(n_cases, bool)
    is_val[np.random.default_rng([seed, 0x5EED]).permutation(n_cases)[:n_val]] = True
    splits = ["validation" if v else "train" for v in is_val]
    counts = {"train": 0, "validation": 0}
    stems = []
    for split in splits:
        counts[split] += 1
        stems.append(f"{'valid' if split == 'validation' else 'train'}_{counts[split]}_a_1")
    return splits, stems


def volume_relpath(stem: str, compress: bool = True) -> str:
    """CT-RATE relative path of a volume: ``dataset/train/train_1/train_1_a/train_1_a_1.nii.gz``."""
    prefix, k = stem.split("_")[:2]
    folder = "train" if prefix == "train" else "valid"
    return f"dataset/{folder}/{prefix}_{k}/{prefix}_{k}_a/{stem}.nii{'.gz' if compress else ''}"


def make_cohort(cfg: SyntheticCohortConfig) -> tuple[pd.DataFrame, list[Findings]]:
    """Tables of a synthetic cohort (no volumes, no files): one row per case, and its findings.

    Each case draws from its own streams ``(seed, index, k)`` (k = 0 clinical/findings/staging,
    1 volume noise, 2 survival, 4 report), so its content and latent event time do not depend on
    ``n_cases``; its name, split and censoring time do.

    Returns:
        DataFrame with ``case_id`` (= CT-RATE volume stem), ``volume_name``, ``image`` (relative path),
        ``split``, clinical covariates (``age, sex, smoking, ecog, t_stage, n_stage, m_stage, stage``),
        the four CT-RATE report fields and ``report`` (findings + impression), ``log_hazard_image``,
        ``log_hazard_clinical``, ``true_log_hazard``, ``latent_event_time``, ``time`` (months),
        ``event`` (1 = death observed); and the :class:`Findings` in the same order.
    """
    splits, stems = _case_names(cfg.n_cases, cfg.validation_fraction, cfg.seed)
    rows, findings = [], []
    for i, (split, stem) in enumerate(zip(splits, stems)):
        rng = np.random.default_rng([cfg.seed, i, 0])
        clinical = make_clinical(rng)
        f = make_findings(rng, i, clinical["age"], case_id=stem)
        t, n, m = _misstage(rng, compute_tnm(f))
        image, clin = (round(v, 6) for v in compute_log_hazard(f, clinical, cfg.clinical_weight))
        report = make_report(f, np.random.default_rng([cfg.seed, i, 4]), slice_thickness_mm=cfg.spacing[2])
        rows.append({"case_id": stem, "volume_name": f"{stem}.nii{'.gz' if cfg.compress else ''}",
                     "image": volume_relpath(stem, cfg.compress),
                     "split": split, **clinical, "t_stage": t, "n_stage": n, "m_stage": m,
                     "stage": compute_stage(t, n, m), **report,
                     "report": f"{report['Findings_EN']} {report['Impressions_EN']}",
                     "log_hazard_image": image, "log_hazard_clinical": clin,
                     "true_log_hazard": round(image + clin, 6)})
        findings.append(f)
    df = pd.DataFrame(rows)
    _add_survival(df, cfg)
    return df, findings


def _add_survival(df: pd.DataFrame, cfg: SyntheticCohortConfig) -> None:
    """Weibull PH event times and independent exponential censoring calibrated to ``censoring_rate``.

    Each case draws (U, E) from its own stream ``(seed, index, 2)``, so its latent time does not depend
    on ``n_cases`` (the censoring rate, calibrated on the whole cohort, does).
    """
    draws = np.array([np.random.default_rng([cfg.seed, i, 2]).random(2) for i in range(len(df))])
    uniforms, censor_unit = 1.0 - draws[:, 0], -np.log1p(-draws[:, 1])  # U in (0, 1]; Exp(1)
    latent = compute_ph_event_times(df["true_log_hazard"].to_numpy(), uniforms,
                                    scale=WEIBULL_SCALE_MONTHS, shape=WEIBULL_SHAPE)
    time, event = compute_censoring(latent, cfg.censoring_rate, censor_unit)
    df["latent_event_time"] = latent
    df["time"] = np.maximum(np.round(time, 3), 1e-3)
    df["event"] = event.astype(int)


def oracle_c_index(df: pd.DataFrame, risk: str = "true_log_hazard") -> float:
    """Harrell's C of the true log-hazard: the best C-index any model can expect on this cohort.

    Uses :func:`ctvl.survival.metrics.harrell_c`, which equals scikit-survival's and lifelines' C
    (``tests/survival/test_metrics.py``).

    Args:
        df: table with ``time``, ``event`` and the ``risk`` column (e.g. from :func:`make_cohort`).
        risk: column holding a log-hazard (higher = earlier death).
    """
    missing = {"time", "event", risk} - set(df.columns)
    if missing:
        raise ValueError(f"oracle_c_index: table lacks column(s) {sorted(missing)}")
    concordance = harrell_c(df[risk].to_numpy(float), df["event"].to_numpy(bool), df["time"].to_numpy(float))
    return float(concordance.cindex)
