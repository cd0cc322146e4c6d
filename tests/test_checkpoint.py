"""Specification of dasg_moe.checkpoint and the config's JSON form (DESIGN.md §4; STYLE.md §5,
§6.6).

A checkpoint round-trips exactly in fp32 and closely in fp16. Every hostile or broken folder
(built in tmp_path, never committed) is refused with one `CheckpointError` whose message names
the problem, and the loader never unpickles anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dasg_moe import CheckpointError, DasgConfig, DasgMoEModel, load_checkpoint, save_checkpoint


def tiny(vocab_size: int, **overrides) -> DasgConfig:
    base = dict(vocab_size=vocab_size, max_len=32, d_model=32, n_layers=2, n_heads=4,
                n_groups=4, window=4, group_mlp_dim=8, n_shallow=4, n_deep=4, d_ff=32,
                d_ff_deep=16, dropout=0.0, id2label={0: "not_equivalent", 1: "equivalent"})
    return DasgConfig(**{**base, **overrides})


def trained_like(model: DasgMoEModel) -> DasgMoEModel:
    """Give the zero-initialised parts (fuse, refinement, deep layer 3) weights, so a round
    trip that dropped any of them would show in the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory, small_tokenizer) -> Path:
    """A good fp32 checkpoint folder; tests copy it before breaking it."""
    torch.manual_seed(0)
    model = trained_like(DasgMoEModel(tiny(small_tokenizer.get_vocab_size()))).eval()
    path = tmp_path_factory.mktemp("ckpt") / "good"
    save_checkpoint(model, small_tokenizer, path, metrics={"accuracy": 0.5}, card="# tiny\n",
                    dtype=torch.float32)
    return path


@pytest.fixture()
def broken(saved, tmp_path) -> Path:
    """A private copy of the good checkpoint to break."""
    return Path(shutil.copytree(saved, tmp_path / "broken"))


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """The loader must never call torch.load (pickle runs arbitrary code)."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)


def sample_input(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(5, vocab_size, (2, 20), generator=gen)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    return ids, mask


def expect_error(path: Path, *phrases: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    return message


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["dasg", "mh_moe"])
def test_fp32_round_trip_gives_identical_logits(tmp_path, small_tokenizer, router):
    torch.manual_seed(0)
    V = small_tokenizer.get_vocab_size()
    model = trained_like(DasgMoEModel(tiny(V, router=router))).eval()
    save_checkpoint(model, small_tokenizer, tmp_path / "ckpt", dtype=torch.float32)
    ckpt = load_checkpoint(tmp_path / "ckpt")
    ids, mask = sample_input(V)
    assert not ckpt.model.training
    assert ckpt.config == model.config
    assert torch.equal(ckpt.model(ids, mask).logits, model(ids, mask).logits)
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[name], value), name
    assert ckpt.tokenizer.get_vocab() == small_tokenizer.get_vocab()


def test_fp16_round_trip_gives_close_logits_and_keeps_layer1_frozen(tmp_path, saved,
                                                                    small_tokenizer):
    fp32 = load_checkpoint(saved)
    save_checkpoint(fp32.model, small_tokenizer, tmp_path / "half")  # default dtype fp16
    assert json.loads((tmp_path / "half" / "config.json").read_text())["torch_dtype"] == "float16"
    assert {t.dtype for t in load_file(tmp_path / "half" / "model.safetensors").values()} == {
        torch.float16}
    half = load_checkpoint(tmp_path / "half")
    ids, mask = sample_input(fp32.config.vocab_size)
    torch.testing.assert_close(half.model(ids, mask).logits, fp32.model(ids, mask).logits,
                               atol=2e-2, rtol=0)
    for deep in half.model.deep_experts():
        assert not deep.w1.requires_grad and not deep.b1.requires_grad


def test_checkpoint_folder_holds_the_documented_files(saved):
    assert {p.name for p in saved.iterdir()} == {"config.json", "model.safetensors",
                                                 "tokenizer.json", "metrics.json", "README.md"}
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "dasg_moe" and config["architectures"] == ["DasgMoEModel"]
    assert load_checkpoint(saved).metrics == {"accuracy": 0.5}


# --- config JSON ---------------------------------------------------------------------------


def test_config_json_round_trip_restores_int_label_keys_and_tuples():
    cfg = tiny(100, deep_init_from=(1, 0, 3, 2), special_token_ids=(101, 102))
    text = cfg.to_json()
    assert json.loads(text)["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    back = DasgConfig.from_json(text)
    assert back == cfg
    assert back.id2label == {0: "not_equivalent", 1: "equivalent"}
    assert back.deep_init_from == (1, 0, 3, 2) and back.special_token_ids == (101, 102)


def test_config_json_round_trip_through_a_file(tmp_path):
    cfg = tiny(100, router="da_moe", theta_s=0.25)
    cfg.to_json(tmp_path / "config.json")
    assert DasgConfig.from_json(tmp_path / "config.json") == cfg


def test_config_rejects_an_unknown_key_by_name():
    d = tiny(100).to_dict() | {"n_expertz": 8}
    with pytest.raises(ValueError, match="n_expertz"):
        DasgConfig.from_dict(d)


def test_config_rejects_a_newer_format_version():
    d = tiny(100).to_dict() | {"format_version": 99}
    with pytest.raises(ValueError, match="format_version 99 is newer"):
        DasgConfig.from_dict(d)


# --- hostile and broken checkpoints ----------------------------------------------------------


def test_pickle_weights_are_refused_without_being_read(broken):
    state = DasgMoEModel(DasgConfig.from_json(broken / "config.json")).state_dict()
    (broken / "model.safetensors").unlink()
    torch.save(state, broken / "pytorch_model.bin")  # a real pickle (writing it is fine)
    expect_error(broken, "pytorch_model.bin", "no model.safetensors", "Pickle files are refused")


def test_truncated_weights_are_refused(broken):
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    expect_error(broken, "model.safetensors", "corrupt or truncated")


def test_truncated_header_is_refused(broken):
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    expect_error(broken, "corrupt or truncated")


def rewrite_weights(path: Path, change) -> None:
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_nan_weights_are_refused(broken):
    def poison(t):
        t["classifier.weight"][0, 0] = float("nan")

    rewrite_weights(broken, poison)
    expect_error(broken, "classifier.weight", "NaN or Inf")


def test_infinite_weights_are_refused(broken):
    def poison(t):
        t["blocks.0.ffn.deep.w2"][0, 0, 0] = float("inf")

    rewrite_weights(broken, poison)
    expect_error(broken, "blocks.0.ffn.deep.w2", "NaN or Inf")


def test_wrong_shape_is_refused(broken):
    def reshape(t):
        t["blocks.1.ffn.shallow.w_in"] = torch.zeros(4, 32, 64)

    rewrite_weights(broken, reshape)
    expect_error(broken, "blocks.1.ffn.shallow.w_in", "shape (4, 32, 64)", "(4, 32, 32)")


def test_missing_tensor_is_refused(broken):
    rewrite_weights(broken, lambda t: t.pop("blocks.0.attn.fuse.weight"))
    expect_error(broken, "missing tensors: blocks.0.attn.fuse.weight")


def test_extra_tensor_is_refused(broken):
    rewrite_weights(broken, lambda t: t.update({"backdoor.weight": torch.zeros(3)}))
    expect_error(broken, "unexpected tensors: backdoor.weight")


def test_integer_tensor_is_refused(broken):
    def to_int(t):
        t["pooler.weight"] = t["pooler.weight"].to(torch.int32)

    rewrite_weights(broken, to_int)
    expect_error(broken, "pooler.weight", "dtype torch.int32")


def edit_config(path: Path, **changes) -> None:
    file = path / "config.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"theta_s": 0.8, "theta_d": 0.2}, "theta_s=0.8, theta_d=0.2"),
    ({"d_model": -32}, "'d_model' must be a positive integer"),
    ({"n_layers": 0}, "'n_layers' must be a positive integer"),
    ({"router": "oracle"}, "'router' is 'oracle'"),
    ({"attention": "linear"}, "'attention' is 'linear'"),
    ({"hidden_size": 32}, "unknown config key(s): hidden_size"),
    ({"format_version": 2}, "format_version 2 is newer"),
    ({"id2label": ["no", "yes"]}, "id2label"),
    ({"id2label": {"zero": "no", "1": "yes"}}, "id2label"),
    ({"n_heads": "4"}, "'n_heads' must be a positive integer"),
    ({"theta_s": None}, "'theta_s' must be a finite number"),
    ({"deep_init_from": ["a"]}, "deep_init_from"),
    ({"d_model": 48}, "shape"),  # a valid config that does not match the weights
])
def test_invalid_config_is_refused_by_name(broken, changes, phrase):
    edit_config(broken, **changes)
    expect_error(broken, "config.json" if phrase != "shape" else "model.safetensors", phrase)


def test_invalid_json_config_is_refused(broken):
    (broken / "config.json").write_text('{"d_model": 32,')
    expect_error(broken, "config.json", "not valid JSON")


def test_config_that_is_not_an_object_is_refused(broken):
    (broken / "config.json").write_text("[1, 2]")
    expect_error(broken, "config.json", "must be an object")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_missing_files_are_named(broken, name):
    (broken / name).unlink()
    expect_error(broken, name, "missing")


def test_missing_folder_is_named(tmp_path):
    expect_error(tmp_path / "nowhere", "nowhere", "not a checkpoint folder")


def test_tokenizer_larger_than_the_vocabulary_is_refused(broken):
    edit_config(broken, vocab_size=50)

    def shrink(t):
        t["embeddings.word.weight"] = t["embeddings.word.weight"][:50]
        t["mlm_bias"] = t["mlm_bias"][:50]

    rewrite_weights(broken, shrink)
    expect_error(broken, "tokenizer.json", "vocab_size 50")


def test_corrupt_metrics_are_refused(broken):
    (broken / "metrics.json").write_text("{nope")
    expect_error(broken, "metrics.json", "not valid JSON")
