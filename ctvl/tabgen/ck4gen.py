r"""CK4Gen (paper 003): synthetic survival tables by Cox knowledge distillation.

Fit (:meth:`CK4Gen.fit`, figure 1 d-f of the paper):

1. the covariates are encoded by :class:`ctvl.data.tabular.TabularEncoder` (standardised numbers, full one-hot
   blocks, a missing-indicator column after each numeric column with missing cells);
2. a ridge CoxPH teacher is fitted on them (:class:`ctvl.survival.teachers.Teacher`);
3. the :class:`~ctvl.tabgen.dcm.DCMEncoder` learns the teacher's standardised log-hazard (distillation) while the
   :class:`~ctvl.tabgen.dcm.SynthNetDecoder` learns to reconstruct the encoded covariates from :math:`z`. With
   ``reconstruction_weight`` :math:`\rho` the loss is :math:`L_{KD} + L_{rec}` and the reconstruction gradient
   reaches the encoder scaled by :math:`\rho` (0: the paper's separate stages, the encoder shaped by the teacher
   alone). One AdamW loop with early stopping on held-out training rows (``ctvl.survival.network_fit``).

Sample (:meth:`CK4Gen.sample`, figure 1 a-c): draw real training records, take their codes :math:`z`, add
:math:`\sigma\,\mathrm{sd}(z)\,\varepsilon` with :math:`\varepsilon \sim \mathcal N(0, I)`, decode, draw 0/1
columns, levels and missing cells from the decoder's probabilities (or take the most likely), map back to the
table's columns and post-process (:class:`~ctvl.tabgen.postprocess.ColumnBounds`).
Event and duration are copied from the drawn records (``outcome="copy"``, the paper's way) or drawn from the
teacher's Breslow curve given the synthetic covariates and the real censoring distribution (``"generate"``,
:class:`~ctvl.tabgen.outcomes.OutcomeModel`). With ``latent="mixture"`` the codes come from a Gaussian mixture
fitted on all training codes instead of from single records.

A saved generator (:meth:`CK4Gen.save`: safetensors + JSON, no pickle) holds the training patients' codes
and outcomes: it is as private as the real table. Share the sampled tables, not the generator.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ctvl.config import SynthTabularConfig, from_dict, to_dict
from ctvl.data.tabular import TabularEncoder
from ctvl.survival.network_fit import fit_network
from ctvl.survival.teachers import Teacher
from ctvl.tabgen.dcm import (
    DCMEncoder,
    SynthNetDecoder,
    decode_blocks,
    distillation_loss,
    draw_discrete,
    reconstruction_loss,
)
from ctvl.tabgen.normal_scores import NormalScores
from ctvl.tabgen.outcomes import OutcomeModel
from ctvl.tabgen.postprocess import ColumnBounds

__all__ = ["CK4Gen"]

log = logging.getLogger(__name__)
_FORMAT = "ctvl.CK4Gen"


class _Networks(torch.nn.Module):
    """Encoder and decoder as one module (one state dict, one optimiser)."""

    def __init__(self, dim: int, cfg: SynthTabularConfig):
        super().__init__()
        self.encoder = DCMEncoder(dim, cfg.hidden, cfg.latent_dim, cfg.experts, cfg.dropout)
        self.decoder = SynthNetDecoder(cfg.latent_dim, tuple(reversed(cfg.hidden)), dim, cfg.dropout)


class CK4Gen:
    """The generator: ``fit(covariates, event, time)``, then ``sample(n, ...)``; ``save``/``load`` a folder."""

    def __init__(self, cfg: SynthTabularConfig = SynthTabularConfig()):
        self.cfg = cfg

    # ------------------------------------------------------------------ fit
    def fit(self, covariates: pd.DataFrame, event, time, outcome_columns: tuple[str, str] = ("time", "event")
            ) -> CK4Gen:
        """Fit on the real training rows: covariates (n, p), events (n,) bool, times (n,) float; ``outcome_columns``
        names the time and event columns of the sampled tables."""
        cfg = self.cfg
        if set(outcome_columns) & set(covariates.columns):
            raise ValueError(f"covariates may not be named like the outcome columns {outcome_columns}")
        self.outcome_columns_ = tuple(outcome_columns)
        event, time = np.asarray(event, bool), np.asarray(time, np.float64)
        self.encoder_ = TabularEncoder(categorical="onehot", missing_indicators=True).fit(covariates)
        self.bounds_ = ColumnBounds().fit(covariates)
        X = self.encoder_.transform(covariates)
        numeric = [a for _, role, a, _ in self.encoder_.blocks() if role == "numeric"]
        self.scores_ = NormalScores().fit(X, numeric)
        Y = self.scores_.transform(X)  # the decoder's target: numbers as normal scores
        teacher = Teacher("coxph", alpha=cfg.teacher_alpha).fit(X, event, time)
        self.teacher_coef_ = teacher.cox_.coef
        log_hz = teacher.predict_log_hazard(X)
        self.outcomes_ = OutcomeModel().fit(log_hz, event, time)
        target = (log_hz - log_hz.mean()) / (log_hz.std() or 1.0)

        torch.manual_seed(cfg.seed)
        self.net = _Networks(X.shape[1], cfg)
        blocks, rho = self.encoder_.blocks(), cfg.reconstruction_weight
        x_t, h_t = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
        y_t = torch.as_tensor(Y, dtype=torch.float32)

        def loss_fn(x, h, y):
            z = self.net.encoder(x)
            z_dec = z if rho == 1.0 else rho * z + (1.0 - rho) * z.detach()  # value z, encoder gradient x rho
            return distillation_loss(self.net.encoder.risk(z), h) + \
                reconstruction_loss(self.net.decoder(z_dec), y, blocks)

        held = self._validation_rows(time.size)
        keep = np.setdiff1d(np.arange(time.size), held)
        self.net.eval()
        with torch.no_grad():
            start = self._losses(x_t, h_t, y_t, blocks)
        history = fit_network(self.net, loss_fn, (x_t[keep], h_t[keep], y_t[keep]), seed=cfg.seed,
                              epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                              validation=(x_t[held], h_t[held], y_t[held]) if held.size else None,
                              patience=cfg.patience)
        with torch.no_grad():
            end = self._losses(x_t, h_t, y_t, blocks)
            self.latent_ = self.net.encoder(x_t).double().numpy()  # (n, L)
        student = self.student_risk(covariates)
        self.latent_sd_ = self.latent_.std(0)
        self.event_, self.time_ = event, time
        self.history_ = {**history, "loss_before": start, "loss_after": end,
                         "teacher_student_correlation": float(np.corrcoef(student, target)[0, 1])}
        log.info("CK4Gen: %d rows, %d features, %s epochs; distillation MSE %.3f -> %.3f, reconstruction %.3f -> "
                 "%.3f; student-teacher r = %.3f", time.size, X.shape[1], history["epochs"], start["distillation"],
                 end["distillation"], start["reconstruction"], end["reconstruction"],
                 self.history_["teacher_student_correlation"])
        return self

    def _validation_rows(self, n: int) -> np.ndarray:
        if not self.cfg.validation_fraction:
            return np.arange(0)
        rng = np.random.default_rng(self.cfg.seed + 104729)
        return np.sort(rng.choice(n, max(2, int(round(self.cfg.validation_fraction * n))), replace=False))

    def _losses(self, x: torch.Tensor, h: torch.Tensor, y: torch.Tensor, blocks) -> dict:
        z = self.net.encoder(x)
        return {"distillation": float(distillation_loss(self.net.encoder.risk(z), h)),
                "reconstruction": float(reconstruction_loss(self.net.decoder(z), y, blocks))}

    # ------------------------------------------------------------------ sample
    def sample(self, n: int = 0, noise: float = 1.0, outcome: str = "generate", seed: int = 0,
               discrete: str = "sample", latent: str = "records", components: int = 10) -> pd.DataFrame:
        """``n`` synthetic rows (0: as many as the training rows): the covariates in the real columns and dtypes,
        then the time (float64) and event (bool) columns (``outcome_columns_``, default ``time`` and ``event``).

        Args:
            n: rows; records are drawn without replacement while ``n`` <= the training rows.
            noise: SD of the latent perturbation in units of each latent dimension's training SD.
            outcome: ``"generate"`` (times from the teacher and the real censoring) or ``"copy"`` (from the
                drawn records).
            seed: seeds the draws.
            discrete: ``"sample"`` draws 0/1 columns, levels and missing cells from the decoder's probabilities;
                ``"argmax"`` takes the most likely one.
            latent: ``"records"`` perturbs the codes of drawn training records (the paper's way); ``"mixture"``
                draws codes from a Gaussian mixture (``components``, full covariances) fitted on all training
                codes, so that no row derives from one patient (``noise`` unused; ``outcome`` must be generate).
        """
        if latent not in ("records", "mixture"):
            raise ValueError(f"`latent` must be 'records' or 'mixture', got {latent!r}")
        if latent == "mixture" and outcome == "copy":
            raise ValueError("`outcome='copy'` needs drawn records: use latent='records'")
        if outcome not in ("generate", "copy"):
            raise ValueError(f"`outcome` must be 'generate' or 'copy', got {outcome!r}")
        if discrete not in ("sample", "argmax"):
            raise ValueError(f"`discrete` must be 'sample' or 'argmax', got {discrete!r}")
        rng = np.random.default_rng(seed)
        n_train = self.time_.size
        n = n or n_train
        idx = rng.choice(n_train, n, replace=n > n_train)
        if latent == "mixture":
            z = self._mixture(components, seed).sample(n)[0]
            z = z[rng.permutation(n)]  # sklearn returns the rows grouped by component
        else:
            z = self.latent_[idx] + noise * self.latent_sd_ * rng.standard_normal((n, self.latent_.shape[1]))
        with torch.no_grad():
            raw = self.net.decoder(torch.as_tensor(z, dtype=torch.float32))
            encoded = self.scores_.inverse(decode_blocks(raw, self.encoder_.blocks()).double().numpy())
        if discrete == "sample":
            encoded = draw_discrete(encoded, self.encoder_.blocks(), rng)
        covariates = self.bounds_.restore(self.encoder_.inverse_transform(encoded))
        if outcome == "copy":
            time, event = self.time_[idx], self.event_[idx]
        else:
            time, event = self.outcomes_.sample(self.teacher_log_hazard(covariates), rng)
        return covariates.assign(**dict(zip(self.outcome_columns_, (time, event))))

    def _mixture(self, components: int, seed: int):
        from sklearn.mixture import GaussianMixture

        k = max(1, min(components, self.latent_.shape[0] // 10))
        return GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(self.latent_)

    def teacher_log_hazard(self, covariates: pd.DataFrame) -> np.ndarray:
        """(n,) the CoxPH teacher's log-hazard of covariates in the real columns."""
        return self.encoder_.transform(covariates) @ self.teacher_coef_

    def student_risk(self, covariates: pd.DataFrame) -> np.ndarray:
        """(n,) the distilled encoder's risk :math:`r(x)` of covariates in the real columns (teacher's SD units)."""
        x = torch.as_tensor(self.encoder_.transform(covariates), dtype=torch.float32)
        with torch.no_grad():
            return self.net.encoder.risk(self.net.encoder(x)).double().numpy()

    # ------------------------------------------------------------------ state
    def save(self, directory) -> Path:
        """``networks.safetensors``, ``records.safetensors`` (training codes and outcomes) and ``generator.json``."""
        from safetensors.numpy import save_file as save_numpy
        from safetensors.torch import save_file

        from ctvl.utils.atomic import atomic_open, atomic_path

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "networks.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        with atomic_path(directory / "records.safetensors") as tmp:
            save_numpy({"latent": self.latent_, "time": self.time_, "event": self.event_.astype(np.uint8)}, str(tmp))
        meta = {"format": _FORMAT, "version": 1, "config": to_dict(self.cfg), "encoder": self.encoder_.to_dict(),
                "bounds": self.bounds_.to_dict(), "scores": self.scores_.to_dict(),
                "outcomes": self.outcomes_.to_dict(),
                "teacher_coef": self.teacher_coef_.tolist(), "outcome_columns": list(self.outcome_columns_),
                "history": self.history_}
        with atomic_open(directory / "generator.json", "w") as fh:
            json.dump(meta, fh, indent=1, default=float)
        return directory

    @classmethod
    def load(cls, directory) -> CK4Gen:
        """The generator :meth:`save` wrote."""
        from safetensors.numpy import load_file as load_numpy
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / "generator.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no generator.json (not a `ctvl synth-tabular fit` model folder)")
        meta = json.loads(path.read_text())
        if meta.get("format") != _FORMAT or meta.get("version") != 1:
            raise ValueError(f"{path}: not a {_FORMAT} version 1 ({meta.get('format')!r})")
        gen = cls(from_dict(SynthTabularConfig, meta["config"]))
        gen.encoder_ = TabularEncoder.from_dict(meta["encoder"])
        gen.bounds_ = ColumnBounds.from_dict(meta["bounds"])
        gen.scores_ = NormalScores.from_dict(meta["scores"])
        gen.outcomes_ = OutcomeModel.from_dict(meta["outcomes"])
        gen.teacher_coef_ = np.asarray(meta["teacher_coef"], np.float64)
        gen.history_ = meta["history"]
        gen.outcome_columns_ = tuple(meta["outcome_columns"])
        gen.net = _Networks(gen.teacher_coef_.size, gen.cfg)
        gen.net.load_state_dict(load_file(str(directory / "networks.safetensors")))
        gen.net.eval()
        records = load_numpy(str(directory / "records.safetensors"))
        gen.latent_, gen.time_, gen.event_ = records["latent"], records["time"], records["event"].astype(bool)
        gen.latent_sd_ = gen.latent_.std(0)
        return gen
