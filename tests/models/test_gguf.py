"""GGUF -> Hugging Face folder: the real SmolLM2 of ctvl[smollm] (slow; skipped without the extra)."""

import pytest
import torch

from ctvl.models.gguf import convert_gguf, smollm2_gguf


def test_missing_package_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no such GGUF file"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


@pytest.mark.slow
def test_smollm2_converts_and_the_folder_answers_like_the_gguf_model(tmp_path):
    pytest.importorskip("gguf", reason="needs the gguf package: pip install 'ctvl[smollm]'")
    try:
        path = smollm2_gguf()
    except ValueError as err:
        pytest.skip(str(err))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf(path, tmp_path / "smollm2")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer("The capital of France is", return_tensors="pt")
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, reference(**ids).logits, rtol=1e-4, atol=1e-4)
        answer = reloaded.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(answer[0, ids["input_ids"].shape[1]:])
