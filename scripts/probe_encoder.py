"""What a frozen encoder sees: linear probes of its cached features on a synthetic cohort's validation split.

Reads a ``ctvl demo`` output folder (``cohort/manifest.csv``, ``cohort/findings.csv``, ``cache/features``),
averages each case's feature map over (x, y, z), standardises on the train split, and prints

* per binary finding: validation AUC of a logistic-regression probe fitted on the train split (with
  the metastases also split by site: liver and adrenal next to the bone lesion);
* the validation R^2 of a ridge probe for the image part of the true log-hazard (its train-split
  predictions are cross-fitted, so the CoxPH below does not learn from overfit values);
* validation Harrell's C of CoxPH models: clinical covariates only; clinical + the ridge probe's image
  risk (what a model that fuses these features linearly can expect); clinical + the true image part
  (what a perfect encoder allows); and the oracle (the true log-hazard);
* validation Harrell's C of CoxPH models on clinical covariates plus the *true* value of each imaging
  feature of the survival truth (``compute_image_features``), one at a time, then all of them with and
  without ``metastatic_sites``: which findings carry the risk that clinical staging misses;
* how good an encoder's reading of the metastatic sites must be: CoxPH on clinical covariates plus the
  true site count blurred by Gaussian noise of growing SD, next to the AUC with which that blurred
  count detects any metastasis (mean over repeated draws).

The gap between the last two CoxPH rows and the first says how much of the survival signal the encoder
leaves on the table; the per-finding AUCs say which findings it misses.

With ``--encoder`` the features come from that checkpoint (Merlin layout, e.g. a ``ctvl
pretrain-encoder`` output; ``--layers`` and ``--base_width`` give its architecture) run over the run's
preprocessed volumes (``cache/images``) instead of the run's feature cache: another encoder, judged
on the same cases and split.

    python scripts/probe_encoder.py --run demo_out
    python scripts/probe_encoder.py --run demo_out --encoder encoder.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

def pooled_features(run: Path, case_ids, encoder=None, batch_size: int = 16) -> np.ndarray:
    """(n, C): each case's feature map averaged over its spatial axes.

    The maps come from the run's feature cache, or with ``encoder`` (an image encoder module) from
    running it over the run's preprocessed volumes.
    """
    if encoder is None:
        from ctvl.data.feature_cache import load_features

        maps = [np.asarray(load_features(run / "cache" / "features", c), dtype=np.float64) for c in case_ids]
        return np.stack([m.reshape(m.shape[0], -1).mean(axis=1) for m in maps])
    import torch

    from ctvl.data.preprocess import load_cached

    case_ids, pooled = list(case_ids), []
    with torch.no_grad():
        for start in range(0, len(case_ids), batch_size):
            batch = [np.asarray(load_cached(run / "cache" / "images", c), np.float32)
                     for c in case_ids[start:start + batch_size]]
            pooled.append(encoder(torch.from_numpy(np.stack(batch))).mean(dim=(2, 3, 4)).double().numpy())
    return np.concatenate(pooled)


def image_risk_probe(X: np.ndarray, target: np.ndarray, train: np.ndarray, valid: np.ndarray,
                     seed: int = 0, folds: int = 5) -> tuple[np.ndarray, float]:
    """A ridge probe's image risk for every case, and its validation R^2.

    Train-split cases get out-of-fold predictions (``folds``-fold cross-fitting): in-sample predictions
    would be overfit, so a CoxPH fitted on them would over-trust the probe and score worse on validation
    than the features allow. Validation cases get the prediction of the ridge fitted on the whole train split.

    Args:
        X: ``(n, d)`` standardised features.
        target: ``(n,)`` the value to predict (the image part of the true log-hazard).
        train, valid: ``(n,)`` boolean masks of the two splits.

    Returns:
        ``(risk (n,), R^2 on valid)``; ``risk`` is NaN outside ``train | valid``.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    ridge = RidgeCV(alphas=np.logspace(-2, 4, 25))
    risk = np.full(len(X), np.nan)
    cv = KFold(folds, shuffle=True, random_state=seed)
    risk[train] = cross_val_predict(ridge, X[train], target[train], cv=cv)
    ridge.fit(X[train], target[train])
    risk[valid] = ridge.predict(X[valid])
    return risk, float(ridge.score(X[valid], target[valid]))


def noisy_feature_c_index(cox_c, clinical: np.ndarray, feature: np.ndarray, sds=(0.0, 0.3, 0.5, 0.8, 1.2, 2.0),
                          repeats: int = 20, seed: int = 0) -> dict[float, tuple[float, float]]:
    """What a blurred reading of ``feature`` adds to clinical covariates.

    For each noise SD: ``feature + N(0, sd^2)`` (``repeats`` draws), the AUC with which it detects
    ``feature > 0`` over all cases, and ``cox_c`` (validation C of a CoxPH fitted on the train split)
    of ``[clinical, blurred feature]``.

    Args:
        cox_c: ``(n, d) covariates -> C``.
        clinical: ``(n, k)`` clinical covariates.
        feature: ``(n,)`` a true imaging feature (e.g. the number of metastatic sites).

    Returns:
        ``{sd: (mean detection AUC, mean C)}``; ``sd = 0`` gives the true feature's C.
    """
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    out = {}
    for sd in sds:
        draws = [feature + rng.normal(0.0, sd, len(feature)) for _ in range(repeats if sd > 0 else 1)]
        auc = np.mean([roc_auc_score(feature > 0, d) for d in draws])
        out[float(sd)] = (float(auc), float(np.mean([cox_c(np.c_[clinical, d]) for d in draws])))
    return out


def with_metastasis_sites(findings: pd.DataFrame) -> pd.DataFrame:
    """``findings.csv`` rows plus ``liver_metastasis_present`` and ``adrenal_metastasis_present`` (bool),
    placed after ``metastases_present``: which site an encoder misses (bone has its own column)."""
    out = findings.copy()
    at = out.columns.get_loc("metastases_present") + 1
    out.insert(at, "adrenal_metastasis_present", out["adrenal_met_side"].notna())
    out.insert(at, "liver_metastasis_present", out["liver_met_count"] > 0)
    return out


def probe(run: Path, seed: int = 0, encoder=None) -> dict:
    """Probe AUCs per finding, the image-risk R^2 and the CoxPH C-indices (see the module docstring).

    ``encoder``: an image encoder module to probe instead of the run's feature cache.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler

    from ctvl.data.synthetic import compute_image_features, load_findings, oracle_c_index
    from ctvl.data.tables import read_table
    from ctvl.workflows.demo import clinical_matrix, split_cox_c_index

    manifest = read_table(run / "cohort" / "manifest.csv", "manifest")
    findings = read_table(run / "cohort" / "findings.csv", "findings table").set_index("case_id")
    findings = findings.loc[manifest["case_id"]]
    findings = with_metastasis_sites(findings)
    train = (manifest["split"] == "train").to_numpy()
    valid = (manifest["split"] == "validation").to_numpy()
    X = pooled_features(run, manifest["case_id"], encoder)
    X = StandardScaler().fit(X[train]).transform(X)

    aucs = {}
    for name in findings.columns:
        y = findings[name]
        if y.dtype != bool or y[train].nunique() < 2 or y[valid].nunique() < 2:
            continue
        y = y.to_numpy(int)
        grid = GridSearchCV(LogisticRegression(max_iter=5000), {"C": np.logspace(-3, 2, 11)}, cv=4,
                            scoring="roc_auc").fit(X[train], y[train])
        aucs[name] = float(roc_auc_score(y[valid], grid.predict_proba(X[valid])[:, 1]))

    image_risk, r2 = image_risk_probe(X, manifest["log_hazard_image"].to_numpy(float), train, valid, seed)

    clinical = clinical_matrix(manifest)

    def cox_c(X_: np.ndarray) -> float:
        return split_cox_c_index(manifest, X_, seed)

    c_index = {
        "clinical only": cox_c(clinical),
        "clinical + encoder image risk": cox_c(np.c_[clinical, image_risk]),
        "clinical + true image risk": cox_c(np.c_[clinical, manifest["log_hazard_image"]]),
        "oracle (true log-hazard)": oracle_c_index(manifest[valid]),
    }
    cases = load_findings(run / "cohort" / "findings.json")
    truth = pd.DataFrame([compute_image_features(f) for f in cases], index=[f.case_id for f in cases])
    truth = truth.loc[manifest["case_id"]]
    c_true = {f"+ {name}": cox_c(np.c_[clinical, truth[[name]]]) for name in truth.columns}
    others = [name for name in truth.columns if name != "metastatic_sites"]
    c_true["+ all but metastatic_sites"] = cox_c(np.c_[clinical, truth[others]])
    c_true["+ all"] = cox_c(np.c_[clinical, truth])
    blurred = noisy_feature_c_index(cox_c, clinical, truth["metastatic_sites"].to_numpy(float), seed=seed)
    return {"n_train": int(train.sum()), "n_valid": int(valid.sum()), "feature_dim": X.shape[1],
            "finding_auc": aucs, "image_risk_r2": r2, "c_index": c_index, "c_index_true_features": c_true,
            "c_index_blurred_metastatic_sites": blurred}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("demo_out"), help="a `ctvl demo` output folder")
    p.add_argument("--encoder", type=Path, default=None,
                   help="probe this Merlin-layout checkpoint instead of the run's feature cache")
    p.add_argument("--layers", type=int, nargs=4, default=(1, 1, 1, 1), help="--encoder's blocks per stage")
    p.add_argument("--base_width", type=int, default=8, help="--encoder's stem width")
    args = p.parse_args(argv)
    encoder = None
    if args.encoder is not None:
        from ctvl.config import VisionConfig
        from ctvl.models.vision3d import load_merlin_image_encoder

        vision = VisionConfig(layers=tuple(args.layers), base_width=args.base_width)
        encoder = load_merlin_image_encoder(args.encoder, vision)
    result = probe(args.run, encoder=encoder)
    print(f"{args.run}: {result['n_train']} train / {result['n_valid']} validation cases, "
          f"{result['feature_dim']} pooled features of {args.encoder or 'the feature cache'}")
    print("validation AUC of a linear probe per finding:")
    for name, auc in result["finding_auc"].items():
        print(f"  {name:32s} {auc:.3f}")
    print(f"validation R^2 of the image part of the true log-hazard: {result['image_risk_r2']:.3f}")
    print("validation Harrell's C (CoxPH fitted on the train split):")
    for name, c in result["c_index"].items():
        print(f"  {name:32s} {c:.3f}")
    print("validation Harrell's C of CoxPH on clinical covariates + true imaging features:")
    for name, c in result["c_index_true_features"].items():
        print(f"  {name:32s} {c:.3f}")
    print("validation Harrell's C of CoxPH on clinical covariates + metastatic_sites blurred by noise:")
    print(f"  {'noise SD':>8s} {'AUC (any metastasis)':>22s} {'C':>7s}")
    for sd, (auc, c) in result["c_index_blurred_metastatic_sites"].items():
        print(f"  {sd:8.1f} {auc:22.3f} {c:7.3f}")
    return result


if __name__ == "__main__":
    main()
