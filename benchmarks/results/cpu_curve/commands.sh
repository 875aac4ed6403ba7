# The 30-minute CPU learning curve of BUILD_NOTES (stop 25): pre-training, then four evaluations.
set -e
cd "$(dirname "$0")/../../.."   # the repository root
PY=${PY:-python}
MIX='[{"ops": [2, 3], "weight": 0.2}, {"ops": [4], "weight": 0.3}, {"ops": [5], "weight": 0.5}]'
TOK=$(JAX_PLATFORMS=cpu "$PY" -c "from interplay_jax.task.tokenizer import default_tokenizer_path; print(default_tokenizer_path())")
time JAX_PLATFORMS=cpu "$PY" -m interplay_jax.main --config=configs/pretrain.py:base,cpu \
  --config.workdir=runs/cpu_curve --config.tokenizer="$TOK" --config.mixture="$MIX" \
  --config.seq_len=512 --config.batch_size=16 --config.document_mask=True \
  --config.optimizer.lr=2e-3 --config.optimizer.min_lr=2e-4 --config.optimizer.b2=0.98 \
  --config.total_steps=4800 --config.ckpt_every=1200 --config.keep_checkpoints=5 --config.eval_every=0 \
  --config.eval.buckets="ID:2-5,OOD-edge:6-7" --config.progress=False
for s in 1200 2400 3600 4800; do
  JAX_PLATFORMS=cpu "$PY" -m interplay_jax.main --config=configs/eval.py:cpu --config.checkpoints=runs/cpu_curve \
    --config.step=$s --config.names=step$s --config.workdir=runs/cpu_curve_eval/step$s --config.eval.ops=2-7 \
    --config.eval.per_op=24 --config.sampling.n=8 --config.sampling.max_new_tokens=320 --config.sampling.batch_prompts=32 \
    --config.buckets="ID:2-5,OOD-edge:6-7" --config.progress=False
done
