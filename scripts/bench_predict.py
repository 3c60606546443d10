"""Time the shared-prefix question ensemble against the plain way, side by side on the same cases.

The risk of a case is the mean over six questions (the paper's ensemble). Three ways to get it, timed
on the same random-init model, the same cases and the same precomputed encoder features (so the image
encoder is excluded from every timing; it runs once per case in all three ways):

* ``shared``     ctvl's :func:`ctvl.infer.prefix.score_questions`: prefix (clinical sentence + image tokens)
                 once per case on the decoder's KV cache, the six question suffixes as one batch on it;
* ``plain x6``   six independent ``CTVLModel.forward`` passes, one per question over the batch (the peer:
                 what ``shared_prefix=False`` and the training-time evaluation do);
* ``plain x1``   one ``CTVLModel.forward`` over all batch x 6 prompts (the best a plain forward can do).

Settings: ``demo`` = the demo model (``configs/train/stage2_tiny.yaml``: hidden 64, 2 layers, 4 image
tokens for 48^3 volumes, the synthetic clinical sentence); ``large`` = hidden 512, 8 layers, 49 image
tokens (Merlin's 7x7 grid), a ~3x longer context. The tokenizer is the demo's byte-level BPE (vocab 1000);
with a 32k Llama vocabulary the plain passes also pay for full-vocabulary logits, so the ratios here are
conservative. Each cell is the best of ``--repeats`` timings; ``max |diff|`` compares the risks of the
shared and the plain x6 ways.

Usage::

    python scripts/bench_predict.py            # demo (64 cases) and large (16 cases), batch 8, best of 3
    python scripts/bench_predict.py --quick    # seconds: 8 cases, small "large" setting
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ctvl.config import CTVLConfig, DecoderConfig, LoRAConfig, ProjectorConfig, SurvivalConfig, VisionConfig
from ctvl.data.prompts import build_example, collate_examples

SETTINGS = {
    "demo": dict(hidden=64, layers=2, heads=4, intermediate=128, grid=(2, 2, 3), context_repeat=1, cases=64),
    "large": dict(hidden=512, layers=8, heads=8, intermediate=1376, grid=(7, 7, 1), context_repeat=3,
                  cases=16),
}
QUICK = {"demo": dict(SETTINGS["demo"], cases=8),
         "large": dict(hidden=128, layers=2, heads=4, intermediate=256, grid=(7, 7, 1), context_repeat=3,
                       cases=8)}


def make_texts(n: int) -> tuple[list[str], list[str]]:
    """Clinical sentences of a synthetic cohort, and the tokenizer corpus as training builds it (one text
    per (case, question) pair: context, question, answer; ``ctvl.train.vlm.build_model``)."""
    from ctvl.config import SyntheticCohortConfig
    from ctvl.data.clinical_text import build_clinical_texts, load_clinical_template
    from ctvl.data.synthetic import make_cohort
    from ctvl.workflows.demo import CONFIGS
    from ctvl.infer.inputs import resolve_questions

    df, _ = make_cohort(SyntheticCohortConfig(n_cases=max(n, 50), seed=0))
    template = load_clinical_template(CONFIGS / "clinical" / "synthetic.yaml")
    contexts = build_clinical_texts(df, template).tolist()
    corpus = [f"{c} {q} {r}" for c, r in zip(contexts, df["report"]) for _, q in resolve_questions()]
    return contexts[:n], corpus


def build_model(setting: dict, corpus: list[str], seed: int = 0):
    from ctvl.models.ctvl import build_ctvl_model
    from ctvl.models.tokenizer import make_tokenizer

    torch.manual_seed(seed)
    cfg = CTVLConfig(
        vision=VisionConfig(layers=(1, 1, 1, 1), base_width=8),
        projector=ProjectorConfig(kind="linear", token_pooling="mean_z"),
        decoder=DecoderConfig(hidden_size=setting["hidden"], num_layers=setting["layers"],
                              num_heads=setting["heads"], intermediate_size=setting["intermediate"],
                              max_position_embeddings=1024),
        lora=LoRAConfig(r=0), survival=SurvivalConfig(head="cox", adapter_hidden=32, adapter_dropout=0.0),
    )
    model = build_ctvl_model(cfg, make_tokenizer(corpus, 1000)).eval()
    with torch.no_grad():  # the adapter's up projection starts at zero: give the branch some shape
        for p in model.survival.parameters():
            p.normal_(0.0, 0.2)
    return model


def plain_one_pass(model, questions, contexts, feats, n_img) -> torch.Tensor:
    """All batch x Q prompts in one ``CTVLModel.forward`` -> risks (B, Q)."""
    tok = model.tokenizer
    examples = [build_example(tok, q, None, c, n_img) for c in contexts for q in questions]
    batch = collate_examples(examples, tok.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                image_features=feats.repeat_interleave(len(questions), dim=0))
    return out.risk.reshape(len(contexts), len(questions))


def time_setting(name: str, setting: dict, batch: int, repeats: int) -> dict:
    from ctvl.infer.inputs import resolve_questions
    from ctvl.infer.prefix import encode_question_prompts, score_questions, split_shared_prefix

    n_cases = setting["cases"]
    contexts, corpus = make_texts(n_cases)
    contexts = [" ".join([c] * setting["context_repeat"]) for c in contexts]
    model = build_model(setting, corpus)
    questions = [q for _, q in resolve_questions()]
    n_img = setting["grid"][0] * setting["grid"][1]
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(n_cases, model.vision.out_channels, *setting["grid"], generator=gen)  # encoder maps
    prompts = encode_question_prompts(model.tokenizer, questions, contexts[0], n_img)
    prefix, suffixes = split_shared_prefix(prompts)
    def scored(f, c, shared):
        return score_questions(model, questions, c, num_image_tokens=n_img, image_features=f,
                               shared_prefix=shared).risk

    ways = {
        "shared": lambda f, c: scored(f, c, True),
        "plain x6": lambda f, c: scored(f, c, False),
        "plain x1": lambda f, c: plain_one_pass(model, questions, c, f, n_img),
    }
    seconds, risks = {k: float("inf") for k in ways}, {}
    with torch.no_grad():
        for fn in ways.values():  # warm-up
            fn(feats[:batch], contexts[:batch])
        for _ in range(repeats):
            for key, fn in ways.items():
                start, out = time.perf_counter(), []
                for i in range(0, n_cases, batch):
                    out.append(fn(feats[i:i + batch], contexts[i:i + batch]))
                seconds[key] = min(seconds[key], time.perf_counter() - start)
                risks[key] = torch.cat(out)
    return {
        "setting": name, "hidden": setting["hidden"], "layers": setting["layers"], "image_tokens": n_img,
        "prefix_tokens": len(prefix), "suffix_tokens": sum(map(len, suffixes)) / len(suffixes),
        "cases": n_cases, "batch": batch,
        "cases_per_s": {k: n_cases / s for k, s in seconds.items()},
        "ratio_vs_plain_x6": seconds["plain x6"] / seconds["shared"],
        "ratio_vs_plain_x1": seconds["plain x1"] / seconds["shared"],
        "max_abs_diff": float((risks["shared"] - risks["plain x6"]).abs().max()),
    }


def report(rows: list[dict]) -> None:
    print("Encoder excluded: every way starts from the same precomputed encoder features.")
    print(f"{'setting':8} {'hidden':>6} {'layers':>6} {'img':>4} {'prefix':>6} {'suffix':>6} "
          f"{'shared c/s':>11} {'plain x6 c/s':>12} {'plain x1 c/s':>12} {'ratio x6':>8} {'ratio x1':>8} "
          f"{'max|diff|':>9}")
    for r in rows:
        c = r["cases_per_s"]
        print(f"{r['setting']:8} {r['hidden']:>6} {r['layers']:>6} {r['image_tokens']:>4} "
              f"{r['prefix_tokens']:>6} {r['suffix_tokens']:>6.1f} {c['shared']:>11.1f} "
              f"{c['plain x6']:>12.1f} {c['plain x1']:>12.1f} {r['ratio_vs_plain_x6']:>7.2f}x "
              f"{r['ratio_vs_plain_x1']:>7.2f}x {r['max_abs_diff']:>9.1e}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 cases and a small 'large' setting (seconds).")
    parser.add_argument("--cases", type=int, default=None,
                        help="Cases per setting (default: demo 64, large 16).")
    parser.add_argument("--batch", type=int, default=8, help="Cases per batch (each runs 6 questions).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable timings on a shared machine; more threads on a "
                             "busy 2-core machine make every op wait for descheduled OpenMP threads).")
    parser.add_argument("--json", default=None, help="Also write the rows as JSON.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = dict(QUICK if args.quick else SETTINGS)
    if args.quick:
        args.batch, args.repeats = 4, 1
    if args.cases:
        settings = {k: dict(v, cases=args.cases) for k, v in settings.items()}
    rows = [time_setting(name, s, args.batch, args.repeats) for name, s in settings.items()]
    report(rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
