"""Small-n sampled evaluation during training: pass@k of held-out prompts logged beside the loss."""
import pathlib

from conftest import load_config

from interplay_jax.main import run_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_pretrain_logs_sampled_pass_at_k(tmp_path):
    from interplay_jax.task.mixture import get_mixture
    from interplay_jax.task.tokenizer import train_on_records

    tok = train_on_records(get_mixture("hard0.1").record(0, i) for i in range(60))
    tok_path = tmp_path / "tokenizer.json"
    tok.save(tok_path)
    c = load_config("pretrain.py:hard0.1,cpu")
    c.update(dict(workdir=str(tmp_path / "run"), tokenizer=str(tok_path), seq_len=512, batch_size=4, total_steps=2,
                  ckpt_every=2, log_every=1, eval_every=2))
    c.model.preset = "micro"
    c.data.update(dict(buffer_docs=16, num_threads=0))
    c.eval.update(dict(per_bucket=2, batch_size=2, buckets="ID:2-10", sample_prompts=2, sample_n=2,
                       sample_max_new_tokens=8))
    out = run_config(c)
    last = out["final"]
    assert 0.0 <= last["eval/sampled/ID/pass@1"] <= last["eval/sampled/ID/pass@2"] <= 1.0
    assert "eval/sampled/process_acc" in last and "eval/heldout_loss/ID" in last
    events = list((tmp_path / "run").rglob("events.out.tfevents*"))
    assert events and any(b"sampled/ID/pass@1" in e.read_bytes() for e in events)
