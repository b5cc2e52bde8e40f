"""contrastive_jax: contrastive pretraining (SimCLR, MoCo, SupCon, CLIP, SigLIP) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="contrastive_jax",
    version="0.1.0",
    description="Contrastive pretraining at accelerator scale in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["contrastive_jax", "contrastive_jax.*"]),
    package_data={"contrastive_jax": ["evaluation/*.txt"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6.0",
        "flax>=0.10.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-cpu>=2.16; sys_platform == 'linux' and platform_machine == 'x86_64'",
        "tensorflow>=2.16; sys_platform != 'linux' or platform_machine != 'x86_64'",
        "tensorflow-datasets>=4.9",
        "tensorboard>=2.16",
        "ml-collections>=0.1.1",
        "einops>=0.7",
        "absl-py>=1.0",
        "clu>=0.0.12",
        "numpy>=1.24",
        "sentencepiece>=0.2",
    ],
    extras_require={
        "demo": ["mlxtend>=0.23"],
        "gpu": ["jax[cuda12]>=0.6.0"],  # NVIDIA GPUs: CUDA 12 wheels of jaxlib
        "tpu": ["jax[tpu]>=0.6.0"],  # Cloud TPU VMs: libtpu
        # python -m contrastive_jax.aot: compiles for TPU slices on any x86-64 Linux host.
        "aot": ["jax[tpu]>=0.6.0"],
        "plot": ["matplotlib>=3.7"],
        "repro": ["matplotlib>=3.7"],
        "export": ["safetensors>=0.4"],  # python -m contrastive_jax.export --format=torchvision
        # torch + torchvision: the export test loads the weights into torchvision's ResNets;
        # libtpu (jax[tpu]): the aot tests compile for TPU slices.
        "test": ["pytest>=7.0", "pytest-xdist>=3.0", "mlxtend>=0.23", "matplotlib>=3.7",
                 "safetensors>=0.4", "torch>=2.4", "torchvision>=0.19", "jax[tpu]>=0.6.0"],
    },
)
