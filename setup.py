from setuptools import find_packages, setup

setup(
    name="interplay_jax",
    version="0.1.0",
    description=("JAX/Flax reproduction of 'On the Interplay of Pre-Training, Mid-Training, "
                 "and RL on Reasoning Language Models' (arXiv 2512.07783)"),
    packages=find_packages(include=["interplay_jax", "interplay_jax.*"]),
    package_data={"interplay_jax.model": ["*.cc"]},  # the fused CPU attention, compiled on first use
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "networkx>=3.2",
        "tensorboard>=2.16",
        "tokenizers>=0.19",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "numpy>=1.26",
        "safetensors>=0.4",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            # torch: `pip install torch==2.13.0` first on CPU-only machines (see .ci/run);
            # the range keeps newer Pythons installable.
            "torch>=2.3",
            "transformers>=4.45",
        ],
    },
)
