"""Sampling from a policy: the KV-cache sampler, rollouts over many prompts, padding helpers, and
loading a policy (run dir or HF dir) with its tokenizer."""
