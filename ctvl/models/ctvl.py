r"""CTVLModel: Merlin encoder -> projector W -> Llama-family decoder (LoRA) + survival branch S_psi.

The LLaVA pattern without subclassing the decoder: the prompt holds ``N`` copies of ``<image>``
(:mod:`ctvl.data.prompts`), :meth:`CTVLModel.forward` embeds the text and scatters the ``N`` projected
visual tokens into those positions, and the stock decoder runs on ``inputs_embeds``. The survival
branch reads a decoder hidden state (``SurvivalConfig.pooling``), passes it through a residual adapter
(``z_surv``) and a DeepSurv or DeepHit head. The model computes its own loss, so DeepSpeed wraps one
module:

.. math::

    \mathcal{L} = \mathcal{L}_{LM} + \alpha\,(\mathcal{L}_{surv} + w_d \mathcal{L}_{disp}
        + w_a \mathcal{L}_{align})

(Liu et al. 2026, arXiv:2604.18250, eq. 5; ``w_d``/``w_a`` are ``dispersion_weight``/``alignment_weight``,
1 in the paper). ``L_LM`` needs ``labels``; the survival terms need ``event`` and ``time`` (Cox) or
``bin_index`` (DeepHit).

Entry points: :func:`build_ctvl_model` (from a :class:`~ctvl.config.CTVLConfig`),
:meth:`CTVLModel.save_pretrained` / :meth:`CTVLModel.from_pretrained`, :meth:`CTVLModel.merge_lora`.

Saved directory (safetensors only; nothing is unpickled when loading)::

    config.yaml              resolved CTVLConfig (ctvl.config.save_config)
    ctvl_model.json          manifest: which of the parts below are present
    projector.safetensors    W
    survival.safetensors     adapter.* + head.*
    decoder_adapter/         peft LoRA adapter (when LoRA is on and not merged)
    decoder/                 full decoder (HF layout), when LoRA is off, merged or trained in full, or when
                             the base decoder is random-init (decoder.path None)
    vision.safetensors       image encoder, when random-init or trainable (else rebuilt from the Merlin .pt)
    tokenizer/               tokenizer with <image> and pad
    prompts.yaml             the prompts' clinical template and questions (PromptConfig), when known:
                             ``ctvl predict``/``generate`` rebuild the training prompts from it
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ctvl.config import IGNORE_INDEX, CTVLConfig, PromptConfig, SurvivalConfig, load_config, save_config
from ctvl.models.decoder import (
    apply_lora,
    base_model,
    is_peft_model,
    load_decoder,
    compile_layers,
    load_lora_adapter,
    merge_lora,
    resize_embeddings,
)
from ctvl.models.projector import build_projector, num_image_tokens, pool_visual_tokens
from ctvl.models.tokenizer import add_missing_tokens, load_tokenizer
from ctvl.models.vision3d import MerlinImageEncoder, build_image_encoder, random_image_encoder
from ctvl.survival.distributed import gather_survival_batch
from ctvl.survival.heads import ResidualAdapter, build_survival_head, pmf_from_logits, survival_from_logits
from ctvl.survival.losses import (
    alignment_loss,
    deephit_loss,
    dispersion_loss,
    dispersion_loss_discrete,
    neg_partial_log_likelihood,
)

logger = logging.getLogger(__name__)

MANIFEST = "ctvl_model.json"
PROMPTS_FILE = "prompts.yaml"
FORMAT_VERSION = 1


@dataclass
class CTVLOutput:
    """What :meth:`CTVLModel.forward` returns; losses are None when their targets were not given.

    Attributes:
        loss: scalar total loss (``L_LM + alpha * (...)``), None without labels and survival targets.
        lm_loss: scalar next-token cross-entropy over the labelled (answer) tokens.
        surv_loss: scalar Cox negative partial log-likelihood or DeepHit loss.
        disp_loss: scalar dispersion loss (unweighted).
        align_loss: scalar alignment loss (unweighted).
        logits: ``(B, L, V)`` decoder logits.
        risk: ``(B,)`` higher = earlier event: ``log_hz`` (Cox) or ``K - E[bin]`` (DeepHit).
        log_hz: ``(B,)`` log relative hazard (Cox head only).
        pmf: ``(B, K)`` probability mass per time bin (DeepHit head only; the rest lies beyond the last cut).
        z_surv: ``(B, D)`` survival latent (adapter output).
        hidden: ``(B, L, D)`` last decoder hidden state.
    """

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    surv_loss: torch.Tensor | None = None
    disp_loss: torch.Tensor | None = None
    align_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    risk: torch.Tensor | None = None
    log_hz: torch.Tensor | None = None
    pmf: torch.Tensor | None = None
    surv: torch.Tensor | None = None
    z_surv: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


class SurvivalBranch(nn.Module):
    """S_psi: residual adapter over the pooled hidden state, then the survival head.

    State-dict keys ``adapter.*`` and ``head.*`` (saved as ``survival.safetensors``).
    """

    def __init__(self, cfg: SurvivalConfig, dim: int):
        super().__init__()
        self.adapter = ResidualAdapter(dim, cfg.adapter_hidden, cfg.adapter_dropout)
        self.head = build_survival_head(cfg, dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` (B, D) -> (``z_surv`` (B, D), head output: log_hz (B,) or logits (B, K))."""
        z = self.adapter(h)
        return z, self.head(z)


def compute_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in float32 over labels != -100; 0 (with a graph) when none are labelled.

    Args:
        logits (torch.Tensor, float): ``(B, L, V)``.
        labels (torch.Tensor, long): ``(B, L)``, aligned with the inputs (shifted here, as in transformers).
    """
    shift_logits = logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
    shift_labels = labels[:, 1:].to(logits.device)
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)


def compute_deephit_risk(pmf: torch.Tensor) -> torch.Tensor:
    r"""Scalar risk from a DeepHit pmf ``(B, K)``: :math:`\sum_{k<K} F(k) = K - \mathbb{E}[\text{bin}]`.

    With the mass beyond the last cut counted as bin K, the sum of the CDF over the K bins equals K minus
    the expected event bin: an expected negative time (in bins) shifted to be >= 0. Higher = earlier.
    """
    return pmf.cumsum(dim=1).sum(dim=1)  # (B, K) -> (B,)


def pool_hidden(
    hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None, pooling: str
) -> torch.Tensor:
    """Hidden states ``(B, L, D)`` -> ``(B, D)`` by ``SurvivalConfig.pooling``.

    ``"last_prompt"`` (default): the last prompt position (attention 1 and, when ``labels`` are given,
    label -100), i.e. the token before the answer. Under causal attention it never sees the answer, so
    training (prompt + answer) and inference (prompt only) read the same state, and the risk of a
    question needs no generated answer. ``"last"``: last position with attention 1 (the ``</s>`` after
    the answer in training: predict on the same layout). ``"mean_all"``: mean over attended positions;
    ``"mean_answer"``: mean over positions with a label (needs ``labels``). Left or right padding.
    """
    mask = attention_mask.bool()
    if pooling in ("last", "last_prompt"):
        if pooling == "last_prompt" and labels is not None:
            mask = mask & (labels == IGNORE_INDEX)
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(dim=1)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "mean_answer":
        if labels is None:
            raise ValueError("survival.pooling='mean_answer' needs labels (the answer positions)")
        mask = mask & (labels != IGNORE_INDEX)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("survival.pooling='mean_answer': a sample has no answer tokens")
    elif pooling != "mean_all":
        raise ValueError(f"survival.pooling must be last_prompt/last/mean_answer/mean_all, got {pooling!r}")
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class CTVLModel(nn.Module):
    """Encoder, projector, decoder (peft-wrapped or not) and survival branch in one module.

    Build with :func:`build_ctvl_model` or :meth:`from_pretrained`.

    Args:
        cfg: the resolved model config (saved with the weights).
        vision: the 3D image encoder; ``(B, 1, x, y, z) -> (B, C, x', y', z')``.
        projector: ``(B, N, C) -> (B, N, D)``.
        decoder: a transformers causal LM, possibly a ``peft.PeftModel``.
        survival: the survival branch on ``D``-wide hidden states.
        tokenizer: the tokenizer holding ``cfg.image_token`` (saved with the model).

    Attributes:
        prompts: the :class:`~ctvl.config.PromptConfig` of the training prompts, or None when unknown.
    """

    def __init__(self, cfg: CTVLConfig, vision: MerlinImageEncoder, projector: nn.Module,
                 decoder: nn.Module, survival: SurvivalBranch, tokenizer):
        super().__init__()
        self.cfg = cfg
        self.vision = vision
        self.projector = projector
        self.decoder = decoder
        self.survival = survival
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids(cfg.image_token)
        self.prompts: Optional[PromptConfig] = None
        """What the training prompts were built from (set by training, saved as ``prompts.yaml``)."""

    # ------------------------------------------------------------------ images
    def get_image_features(
        self, image: torch.Tensor | None = None, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected visual tokens ``(B, N_img, D_llm)``.

        Args:
            image (torch.Tensor, float): ``(B, 1, x, y, z)`` volumes; encoded without autograd when no
                encoder parameter requires grad (a frozen encoder keeps no activations).
            image_features (torch.Tensor, float): instead of ``image``, precomputed encoder maps
                ``(B, C, x, y, z)`` (pooled here) or pooled tokens ``(B, N, C)`` (a frozen-encoder cache).
        """
        if image_features is None:
            if image is None:
                raise ValueError("get_image_features needs `image` or `image_features`")
            trainable = any(p.requires_grad for p in self.vision.parameters())
            with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
                image_features = self.vision(image.to(self.vision.conv1.weight.dtype))  # (B, C, x, y, z)
        if image_features.dim() == 5:
            image_features = pool_visual_tokens(image_features, self.cfg.projector)  # -> (B, N, C)
        if image_features.dim() != 3 or image_features.shape[-1] != self.vision.out_channels:
            raise ValueError(
                f"image_features must be (B, {self.vision.out_channels}, x, y, z) or (B, N, "
                f"{self.vision.out_channels}), got {tuple(image_features.shape)}"
            )
        weight = next(self.projector.parameters())
        return self.projector(image_features.to(weight.dtype))  # (B, N, C) -> (B, N, D)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        image: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings ``(B, L, D)`` with the visual tokens scattered into the ``<image>`` positions."""
        embeds = self.decoder.get_input_embeddings()(input_ids)  # (B, L) -> (B, L, D)
        image_mask = input_ids == self.image_token_id  # (B, L)
        if image is None and image_features is None:
            if bool(image_mask.any()):
                raise ValueError("input_ids hold image tokens but neither image nor image_features was given")
            return embeds
        feats = self.get_image_features(image, image_features)  # (B, N, D)
        # CPU-GPU sync: a count mismatch would otherwise silently misplace visual tokens.
        n_tok, n_feat = int(image_mask.sum()), feats.shape[0] * feats.shape[1]
        if n_tok != n_feat:
            raise ValueError(f"image tokens {n_tok} != image features {n_feat}")
        per_sample = image_mask.sum(dim=1)
        if feats.shape[0] != input_ids.shape[0] or bool((per_sample != feats.shape[1]).any()):
            raise ValueError(
                f"image tokens per sample {per_sample.tolist()} != {feats.shape[1]} features each"
            )
        return embeds.masked_scatter(image_mask.unsqueeze(-1), feats.to(embeds.dtype))

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        image: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        event: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        bin_index: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> CTVLOutput:
        """Language modelling and survival prediction in one pass.

        Args:
            image (torch.Tensor, float): ``(B, 1, x, y, z)`` volumes (or give ``image_features``).
            input_ids (torch.Tensor, long): ``(B, L)`` with ``N_img`` image tokens per row.
            attention_mask (torch.Tensor, long): ``(B, L)``, 1 = real token; None = all ones.
            labels (torch.Tensor, long): ``(B, L)``, -100 = ignored; enables ``lm_loss``.
            event (torch.Tensor, bool): ``(B,)``; with ``time`` (Cox) or ``bin_index`` (DeepHit) enables
                the survival terms.
            time (torch.Tensor, float): ``(B,)`` event or censoring times.
            bin_index (torch.Tensor, long): ``(B,)`` DeepHit time bins.
            image_features (torch.Tensor, float): precomputed ``(B, C, x, y, z)`` or ``(B, N, C)``.

        Returns:
            CTVLOutput: losses (when targets are given), logits, risk, latents.
        """
        if input_ids is None:
            raise ValueError("forward needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed_inputs(input_ids, image, image_features)  # (B, L, D)
        out = self.decoder(
            inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
        )
        hidden = out.hidden_states[-1]  # (B, L, D), after the final norm
        h = pool_hidden(hidden, attention_mask, labels, self.cfg.survival.pooling)  # (B, L, D) -> (B, D)
        res, head_out = self.survival_outputs(h)
        res.logits, res.hidden = out.logits, hidden
        if labels is not None:
            res.lm_loss = compute_lm_loss(out.logits, labels)
        if event is not None:
            self._survival_losses(res, head_out, hidden, attention_mask, event, time, bin_index)
        res.loss = res.lm_loss
        if res.surv_loss is not None:
            s = self.cfg.survival
            aux = res.surv_loss + s.dispersion_weight * res.disp_loss + s.alignment_weight * res.align_loss
            aux = s.alpha * aux
            res.loss = aux if res.loss is None else res.loss + aux
        return res

    def _survival_losses(self, res: CTVLOutput, head_out, hidden, attention_mask, event, time, bin_index):
        s = self.cfg.survival
        event = event.to(head_out.device).bool()
        if s.head == "cox":
            if time is None:
                raise ValueError("survival.head='cox' needs `time` with `event`")
            time = time.to(head_out.device)
            log_hz, ev, t = head_out, event, time
            if s.gather_across_ranks:  # the global risk set; identity without torch.distributed
                log_hz, ev, t = gather_survival_batch(head_out, event, time)
            res.surv_loss = neg_partial_log_likelihood(log_hz, ev, t, ties=s.ties, reduction="mean")
            res.disp_loss = dispersion_loss(res.z_surv, event, time, tau=s.dispersion_tau)
        else:
            if bin_index is None:
                raise ValueError("survival.head='discrete' needs `bin_index` with `event`")
            bin_index = bin_index.to(head_out.device)
            res.surv_loss = deephit_loss(head_out, bin_index, event, s.rank_weight, s.rank_sigma)
            res.disp_loss = dispersion_loss_discrete(res.z_surv, event, bin_index, tau=s.dispersion_tau)
        z_pooled = pool_hidden(hidden, attention_mask, None, "mean_all").float()  # (B, D)
        res.align_loss = alignment_loss(res.z_surv, z_pooled)

    def survival_outputs(self, h: torch.Tensor) -> tuple[CTVLOutput, torch.Tensor]:
        """The survival branch on pooled hidden states, as ``forward`` and the shared-prefix path read it.

        Args:
            h (torch.Tensor, float): ``(R, D)`` pooled decoder states (``SurvivalConfig.pooling``).

        Returns:
            (CTVLOutput with ``z_surv`` (R, D), ``risk`` (R,) and ``log_hz`` (R,) for Cox or ``pmf`` /
            ``surv`` (R, K) for DeepHit, all float32; the head's raw output (R,) or (R, K)).
        """
        z_surv, head_out = self.survival(h.to(next(self.survival.parameters()).dtype))
        z_surv, head_out = z_surv.float(), head_out.float()  # survival losses and risks in float32
        res = CTVLOutput(z_surv=z_surv)
        if self.cfg.survival.head == "cox":
            res.log_hz = res.risk = head_out  # (R,)
        else:
            res.pmf = pmf_from_logits(head_out)  # (R, K)
            res.surv = survival_from_logits(head_out)  # (R, K): S at the cuts
            res.risk = compute_deephit_risk(res.pmf)
        return res, head_out

    def num_image_tokens(self, feature_shape: tuple[int, ...]) -> int:
        """Image tokens per prompt for encoder features of ``feature_shape`` (``(B, C, x, y, z)`` or the grid)."""
        return num_image_tokens(self.cfg.projector, feature_shape)

    # -------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, image=None, image_features=None, **kwargs):
        """``decoder.generate`` on the image-filled prompt embeddings; returns the new token ids only."""
        embeds = self.embed_inputs(input_ids, image, image_features)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        return self.decoder.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    # ------------------------------------------------------------------ export
    def merge_lora(self) -> "CTVLModel":
        """Fold the LoRA adapter into the decoder weights (export); no-op without LoRA."""
        if is_peft_model(self.decoder):
            self.decoder = merge_lora(self.decoder)
            self._decoder_changed = True
        return self

    def _decoder_needs_saving(self) -> bool:
        if self.cfg.decoder.path is None or getattr(self, "_decoder_changed", False):
            return True
        return not is_peft_model(self.decoder) and any(p.requires_grad for p in self.decoder.parameters())

    def _vision_needs_saving(self) -> bool:
        trainable = any(p.requires_grad for p in self.vision.parameters())
        return self.cfg.vision.checkpoint is None or not self.cfg.vision.frozen or trainable

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config, weights (safetensors) and tokenizer (layout in the module docstring).

        Call on rank 0 with full (not ZeRO-3-partitioned) parameters.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, d / "config.yaml")
        save_file(_plain(self.projector.state_dict()), d / "projector.safetensors")
        save_file(_plain(self.survival.state_dict()), d / "survival.safetensors")
        manifest = {"format_version": FORMAT_VERSION, "decoder": None, "decoder_adapter": None}
        manifest["vision"] = None
        peft = is_peft_model(self.decoder)
        if peft:
            self.decoder.save_pretrained(d / "decoder_adapter")
            manifest["decoder_adapter"] = "decoder_adapter"
        if self._decoder_needs_saving():
            base = base_model(self.decoder)
            base.save_pretrained(d / "decoder", state_dict=_strip_lora(base.state_dict()) if peft else None)
            manifest["decoder"] = "decoder"
        if self._vision_needs_saving():
            save_file(_plain(self.vision.state_dict()), d / "vision.safetensors")
            manifest["vision"] = "vision.safetensors"
        self.tokenizer.save_pretrained(d / "tokenizer")
        manifest["tokenizer"] = "tokenizer"
        manifest["prompts"] = None
        if self.prompts is not None:
            save_config(self.prompts, d / PROMPTS_FILE)
            manifest["prompts"] = PROMPTS_FILE
        (d / MANIFEST).write_text(json.dumps(manifest, indent=2))
        logger.info("saved CTVLModel to %s (%s)", d, {k: v for k, v in manifest.items() if v})

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, vision_checkpoint: str | Path | None = None
    ) -> "CTVLModel":
        """Load a saved model offline, in eval mode (no optimizer or scheduler state).

        Args:
            directory: written by :meth:`save_pretrained`.
            vision_checkpoint: Merlin ``.pt`` to use instead of the path in the saved config (ignored when
                the encoder weights were saved in ``vision.safetensors``).
        """
        d = Path(directory)
        if not (d / MANIFEST).is_file():
            raise ValueError(f"{d} has no {MANIFEST}: not a directory written by CTVLModel.save_pretrained")
        manifest = json.loads((d / MANIFEST).read_text())
        cfg = load_config(CTVLConfig, d / "config.yaml")
        tokenizer = load_tokenizer(d / manifest["tokenizer"], cfg.image_token)
        vision = _load_vision(cfg, d, manifest, vision_checkpoint)
        dec_cfg = cfg.decoder
        if manifest["decoder"] is not None:  # saved weights replace decoder.path
            dec_cfg = replace(cfg.decoder, path=str(d / manifest["decoder"]))
        decoder = load_decoder(dec_cfg, vocab_size=len(tokenizer))
        adapter = d / manifest["decoder_adapter"] if manifest["decoder_adapter"] else None
        model = assemble_model(cfg, vision, decoder, tokenizer, adapter=adapter, new_lora=False)
        model._decoder_changed = manifest["decoder"] is not None and cfg.decoder.path is not None
        model.projector.load_state_dict(load_file(d / "projector.safetensors"))
        model.survival.load_state_dict(load_file(d / "survival.safetensors"))
        if manifest.get("prompts"):
            model.prompts = load_config(PromptConfig, d / manifest["prompts"])
        return model.eval()


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors wants contiguous tensors that share no storage."""
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def _strip_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Base-model weights of a peft-injected model: drop ``lora_*`` keys, unwrap ``base_layer``."""
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if "lora_" not in k}


def _load_vision(cfg: CTVLConfig, d: Path, manifest: dict, vision_checkpoint) -> MerlinImageEncoder:
    if manifest["vision"]:
        vision = random_image_encoder(cfg.vision)
        vision.load_state_dict(load_file(d / manifest["vision"]))
        return vision
    path = vision_checkpoint or cfg.vision.checkpoint
    if path is None:
        raise ValueError(f"{d}: encoder weights were not saved and no Merlin checkpoint is configured")
    return build_image_encoder(replace(cfg.vision, checkpoint=str(path)))


def build_ctvl_model(cfg: CTVLConfig, tokenizer=None) -> CTVLModel:
    """Assemble the model of ``cfg``, offline.

    The encoder is loaded from ``cfg.vision.checkpoint`` (Merlin ``.pt``) or random-init; the decoder from
    ``cfg.decoder.path`` or a tiny random Llama; LoRA per ``cfg.lora``; embeddings resized for the
    tokens the tokenizer lacks (``<image>``, pad).

    Args:
        cfg: the model config.
        tokenizer: None = load it from ``cfg.decoder.tokenizer`` or else ``cfg.decoder.path``; required when
            both are None (e.g. :func:`ctvl.models.tokenizer.make_tokenizer` on the run's report texts).
    """
    if tokenizer is None:
        source = cfg.decoder.tokenizer or cfg.decoder.path
        if source is None:
            raise ValueError(
                "decoder.path and decoder.tokenizer are None: pass a tokenizer, e.g. "
                "ctvl.models.tokenizer.make_tokenizer(texts, cfg.decoder.tokenizer_vocab_size)"
            )
        tokenizer = load_tokenizer(source, cfg.image_token, cfg.decoder.trust_remote_code)
    add_missing_tokens(tokenizer, cfg.image_token)
    vision = build_image_encoder(cfg.vision)
    decoder = load_decoder(cfg.decoder, vocab_size=len(tokenizer))
    return assemble_model(cfg, vision, decoder, tokenizer)


def assemble_model(
    cfg: CTVLConfig,
    vision: MerlinImageEncoder,
    decoder: nn.Module,
    tokenizer,
    adapter: Path | None = None,
    new_lora: bool = True,
) -> CTVLModel:
    """Resize/configure a loaded decoder, wrap it with LoRA, build the projector and survival branch.

    Args:
        adapter: a saved peft adapter directory to load (trainable) instead of a new LoRA.
        new_lora: without ``adapter``, add a fresh LoRA per ``cfg.lora``; False when reloading a decoder
            saved without an adapter (LoRA off or merged).
    """
    resize_embeddings(decoder, len(tokenizer))
    decoder.config.pad_token_id = tokenizer.pad_token_id
    if getattr(decoder, "generation_config", None) is not None:
        decoder.generation_config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        decoder = load_lora_adapter(decoder, adapter, cfg.lora.adapter_dtype)
    elif new_lora:
        decoder = apply_lora(decoder, cfg.lora)
    if cfg.decoder.compile:
        compile_layers(decoder)
    dim = base_model(decoder).config.hidden_size
    projector = build_projector(cfg.projector, vision.out_channels, dim)
    return CTVLModel(cfg, vision, projector, decoder, SurvivalBranch(cfg.survival, dim), tokenizer)
