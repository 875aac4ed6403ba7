"""HF Qwen2 interop: transformers -> ours and ours -> transformers give the same logits (fp32)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from interplay_jax.errors import ConfigError
from interplay_jax.model import hf, init_model, model_config


# The release's LLaMA-Factory/model_configs/difficulty_qwen2_100M/config.json (commit c6676bc), the
# model its LLaMA-Factory/examples/difficulty/debug.yaml pre-trains (preset release45m).
RELEASE_DIFFICULTY_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 2, "eos_token_id": 3,
    "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.02, "intermediate_size": 1536,
    "max_position_embeddings": 2048, "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 8,
    "num_hidden_layers": 12, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 2048, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
    "vocab_size": 2200}


def _random_hf_model(tie: bool, **shape):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    fields = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)
    config = transformers.Qwen2Config(
        **{**fields, **shape}, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial biases and norm scales so a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _torch_logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens))).logits.numpy()


TOKENS = np.random.RandomState(0).randint(0, 300, (2, 13)).astype(np.int32)


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_to_ours(tmp_path, tie):
    ref_model = _random_hf_model(tie)
    ref_model.save_pretrained(tmp_path)
    model, cfg = hf.load(tmp_path)
    assert cfg.tie_embeddings == tie and cfg.num_kv_heads == 2 and cfg.rope_theta == 1e6
    ours = np.asarray(model(jnp.asarray(TOKENS)))
    np.testing.assert_allclose(ours, _torch_logits(ref_model, TOKENS), atol=1e-4, rtol=0)


def test_head_dim_72_both_directions(tmp_path, reference_dir):
    """The release45m layout (8 query / 4 KV heads of 72, hidden 576; fewer layers and a smaller MLP
    and vocabulary to stay fast): transformers -> ours and ours -> transformers agree (fp32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ref_model = _random_hf_model(True, hidden_size=576, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=8, num_key_value_heads=4)
    ref_model.save_pretrained(tmp_path / "theirs")
    model, cfg = hf.load(tmp_path / "theirs")
    assert (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads) == (72, 8, 4)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(TOKENS))), _torch_logits(ref_model, TOKENS),
                               atol=1e-4, rtol=0)
    cfg = model_config("release45m", num_layers=2, intermediate_size=128, vocab_size=300)
    ours = init_model(cfg, seed=5)
    hf.save(ours, cfg, tmp_path / "ours", tokenizer=reference_dir / "tokenizer.json")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours"), dtype=torch.float32).eval()
    np.testing.assert_allclose(_torch_logits(back, TOKENS), np.asarray(ours(jnp.asarray(TOKENS))), atol=1e-4, rtol=0)
    assert hf.read_config(tmp_path / "ours") == cfg


def test_release_difficulty_config_is_release45m():
    assert hf.config_from_hf(RELEASE_DIFFICULTY_CONFIG) == model_config("release45m")
    assert hf.config_from_hf(RELEASE_DIFFICULTY_CONFIG, dtype="bfloat16") == model_config("release45m",
                                                                                       dtype="bfloat16")


def test_pytorch_bin_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    ref_model = _random_hf_model(True)
    ref_model.config.to_json_file(str(tmp_path / "config.json"))
    torch.save(ref_model.state_dict(), str(tmp_path / "pytorch_model.bin"))
    model, _ = hf.load(tmp_path)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(TOKENS))), _torch_logits(ref_model, TOKENS),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("tie", [True, False])
def test_ours_to_transformers(tmp_path, tie, reference_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = model_config("micro", tie_embeddings=tie)
    model = init_model(cfg, seed=3)
    hf.save(model, cfg, tmp_path, tokenizer=reference_dir / "tokenizer.json")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 17)).astype(np.int32)
    np.testing.assert_allclose(_torch_logits(ref, tokens), np.asarray(model(jnp.asarray(tokens))),
                               atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.convert_tokens_to_ids(["<question>", "</answer>"]) == [4, 9]
    # Round trip through our loader is exact.
    again, cfg2 = hf.load(tmp_path)
    assert cfg2 == cfg
    np.testing.assert_array_equal(np.asarray(again.layers[1].q_kernel[...]), np.asarray(model.layers[1].q_kernel[...]))


def test_reference_config_is_paper100m(reference_dir):
    hf_cfg = json.loads((reference_dir / "qwen2_100M_config.json").read_text())
    assert hf.config_from_hf(hf_cfg) == model_config("paper100m")


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        hf.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no config.json"):
        hf.load(tmp_path)
    cfg = model_config("micro")
    hf.save(init_model(cfg), cfg, tmp_path)
    bad = json.loads((tmp_path / "config.json").read_text())
    bad["num_key_value_heads"] = 4  # k/v weights are for 2 kv heads
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"k_proj.weight has shape \(16, 32\), expected \(32, 32\)"):
        hf.load(tmp_path)
    bad["num_key_value_heads"] = 3
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="num_heads=4 is not a multiple of model.num_kv_heads=3"):
        hf.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    bad["num_key_value_heads"] = 2
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="has no model.safetensors"):
        hf.load(tmp_path)
