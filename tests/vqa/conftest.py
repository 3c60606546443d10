"""Hand-written chest-CT reports with known findings (slots as in ``Findings.slots()``).

Fixtures:
    report_cases: list of ``(volume_id, findings_text, impression_text, truth_slots)``.
    reports_frame: the same as a CT-RATE style table (``VolumeName``, ``Findings_EN``, ``Impressions_EN``).
    tiny_llm_dir: a random-init tiny Llama + offline BPE tokenizer with a chat template, saved to a folder.
"""

from __future__ import annotations

import pandas as pd
import pytest

ABSENT = {
    "tumour_present": False,
    "tumour_lobe": None,
    "tumour_size_mm": None,
    "nodes_present": False,
    "node_stations": None,
    "node_short_axis_mm": None,
    "effusion_present": False,
    "effusion_side": None,
    "effusion_size": None,
    "pleural_thickening_present": False,
    "pleural_thickening_side": None,
    "metastases_present": False,
    "metastatic_sites": None,
    "liver_met_size_mm": None,
    "adrenal_met_side": None,
    "adrenal_met_size_mm": None,
    "vessel_involvement_present": False,
    "vessel_involved": None,
    "vessel_effect": None,
    "bone_lesion_present": False,
    "bone_lesion_type": None,
    "bone_lesion_site": None,
    "bone_lesion_size_mm": None,
    "degenerative_spine": False,
    "fracture_present": False,
    "fracture_site": None,
}


def _truth(case_id, **slots):
    return {"case_id": case_id, **ABSENT, **slots}


CASES = [
    (
        "vol_001",
        "Trachea and both main bronchi are open. A spiculated mass measuring 34 x 27 mm was observed in the upper "
        "lobe of the right lung. Enlarged lymph nodes were observed in the right paratracheal (short axis 14 mm) "
        "and subcarinal (short axis 18 mm) stations. A small right pleural effusion was detected. The mass "
        "compresses the superior vena cava. Degenerative changes were observed in the thoracic spine.",
        "Right upper lobe mass with mediastinal lymphadenopathy.",
        _truth(
            "vol_001",
            tumour_present=True,
            tumour_lobe="right upper lobe",
            tumour_size_mm=34,
            nodes_present=True,
            node_stations="right paratracheal; subcarinal",
            node_short_axis_mm="14; 18",
            effusion_present=True,
            effusion_side="right",
            effusion_size="small",
            vessel_involvement_present=True,
            vessel_involved="superior vena cava",
            vessel_effect="compression",
            degenerative_spine=True,
        ),
    ),
    (
        "vol_002",
        "Mediastinal main vascular structures, heart contour and size are normal. No enlarged lymph nodes in "
        "pathological size were detected in the mediastinum. When examined in the lung parenchyma window; A 2.1 cm "
        "mass was observed in the left lower lobe. No pleural effusion-thickening was detected. A 15 mm lytic lesion "
        "is seen in the T7 vertebral body, consistent with metastasis.",
        "Left lower lobe mass. Lytic bone metastasis in T7.",
        _truth(
            "vol_002",
            tumour_present=True,
            tumour_lobe="left lower lobe",
            tumour_size_mm=21,
            metastases_present=True,
            metastatic_sites="bone",
            bone_lesion_present=True,
            bone_lesion_type="lytic",
            bone_lesion_site="T7 vertebral body",
            bone_lesion_size_mm=15,
        ),
    ),
    (
        "vol_003",
        "",
        "A 45 mm mass in the left upper lobe encasing the pulmonary artery. Bilateral moderate pleural effusion.",
        _truth(
            "vol_003",
            tumour_present=True,
            tumour_lobe="left upper lobe",
            tumour_size_mm=45,
            effusion_present=True,
            effusion_side="bilateral",
            effusion_size="moderate",
            vessel_involvement_present=True,
            vessel_involved="pulmonary artery",
            vessel_effect="encasement",
        ),
    ),
    (
        "vol_004",
        "Trachea and both main bronchi are normal.\nNo mass or nodule was detected in the lung parenchyma.\n"
        "No pleural effusion. No lytic or sclerotic bone lesion was detected.",
        "No significant pathology.",
        _truth("vol_004"),
    ),
    (
        "vol_005",
        "A lobulated tumor of 52 mm is located in the right lower lobe. Hypodense lesions are seen in the liver, the "
        "largest measuring 23 mm, suspicious for metastases. A 31 mm mass in the left adrenal gland, consistent "
        "with metastasis. Pleural thickening is observed on the right. A fracture of the right 5th rib is seen.",
        "Right lower lobe tumour with hepatic and left adrenal metastases.",
        _truth(
            "vol_005",
            tumour_present=True,
            tumour_lobe="right lower lobe",
            tumour_size_mm=52,
            metastases_present=True,
            metastatic_sites="liver; adrenal",
            liver_met_size_mm=23,
            adrenal_met_side="left",
            adrenal_met_size_mm=31,
            pleural_thickening_present=True,
            pleural_thickening_side="right",
            fracture_present=True,
            fracture_site="right 5th rib",
        ),
    ),
    (
        "vol_006",
        "Lymphadenopathy with short axis of 22 mm is seen in the aortopulmonary window. A 19 mm nodule in the lingula. "
        "A sclerotic lesion of 12 mm is noted in the left 8th rib. Thoracic aorta diameter is normal.",
        "",
        _truth(
            "vol_006",
            tumour_present=True,
            tumour_lobe="left upper lobe",
            tumour_size_mm=19,
            nodes_present=True,
            node_stations="aortopulmonary window",
            node_short_axis_mm="22",
            bone_lesion_present=True,
            bone_lesion_type="sclerotic",
            bone_lesion_site="left 8th rib",
            bone_lesion_size_mm=12,
        ),
    ),
    (
        "vol_007",
        "Kalp boyutu normal (Türkçe rapor, çeviri). An irregular 2,8\u00a0cm mass \u2013 ﬁbrotic margins \u2013 in the right middle lobe. "
        "Large left pleural effusion\u00a0is present.",
        "Mass in the right middle lobe.",
        _truth(
            "vol_007",
            tumour_present=True,
            tumour_lobe="right middle lobe",
            tumour_size_mm=28,
            effusion_present=True,
            effusion_side="left",
            effusion_size="large",
        ),
    ),
]


@pytest.fixture
def report_cases():
    return list(CASES)


@pytest.fixture
def reports_frame():
    return pd.DataFrame([{"VolumeName": c[0], "Findings_EN": c[1], "Impressions_EN": c[2]} for c in CASES])


@pytest.fixture
def truth_slots():
    return [c[3] for c in CASES]


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """Random-init ``LlamaForCausalLM`` + byte-level BPE tokenizer with a simple chat template, saved offline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctvl.models.tokenizer import make_tokenizer

    corpus = [c[1] + " " + c[2] for c in CASES] + ['{"tumor": "Not mentioned in the report."}'] * 4
    tok = make_tokenizer(corpus, vocab_size=400)
    tok.chat_template = (
        "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_llm")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
