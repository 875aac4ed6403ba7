"""The task layer: synthetic problems, formats, process verification, rewards (pure Python, no JAX)."""
from interplay_jax.task.contexts import CONTEXTS, Context, get_context, register_context
from interplay_jax.task.generator import MODES, build_problem, dependency_graph, generate_problem
from interplay_jax.task.mixture import PRESETS, Mixture, get_mixture
from interplay_jax.task.writer import read_jsonl, write_dataset
from interplay_jax.task.formats import format_document, format_prompt
from interplay_jax.task.verify import Verdict, verify
