"""Configs for the ``tokenizer`` stage: ``--config=configs/tokenizer.py[:preset]``.

Trains the study's byte-level BPE (special tokens [UNK]=0 ... </answer>=9, ~2,200 entries) and
writes ``{workdir}/tokenizer.json`` (pretrain/midtrain read ``runs/tokenizer/tokenizer.json`` by default).

Presets:
  default    100,000 generated documents, ops 2-20 uniform (mixture ``rl_uniform``), contexts A/B/C,
             both modes (so reverse-mode words are learned too). A few minutes on one core.
  tiny       the same from 300 documents (seconds; the vocabulary is padded up to ``vocab_size``).
  reference  no training: validate and copy the original release's tokenizer.json
             (``file``, default ../shared/reference/tokenizer.json) for exact token lengths.
Text sources: ``source=mixture`` (``mixture``: a preset name of interplay_jax.task.mixture; ``modes``:
comma-separated), ``source=jsonl`` (``jsonl``: a glob of JSONL files in the published schema), or
``source=file``. ``num_docs`` caps the documents used (0 = every record of the JSONL files).
"""
import ml_collections

from interplay_jax.config import parse_preset

PRESETS = ("default", "tiny", "reference")


def get_config(arg=None):
    preset = parse_preset(arg, "configs/tokenizer.py", preset=(PRESETS, "default"))["preset"]
    c = ml_collections.ConfigDict()
    c.stage = "tokenizer"
    c.workdir = "runs/tokenizer"
    c.seed = 0
    c.vocab_size = 2200
    c.min_frequency = 2
    c.source = "mixture"                      # mixture | jsonl | file
    c.mixture = "rl_uniform"
    c.modes = "normalforward,forwardreverse"
    c.jsonl = ""
    c.file = "../shared/reference/tokenizer.json"
    c.num_docs = 100_000
    c.progress = True
    if preset == "tiny":
        c.num_docs = 300
    elif preset == "reference":
        c.source = "file"
    return c
