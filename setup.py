from setuptools import find_packages, setup

setup(
    name="ldm",
    version="0.1.0",
    description="Latent diffusion / Stable Diffusion: original configs and checkpoints, "
                "offline, safe loading, any device",
    packages=find_packages(include=["ldm", "ldm.*"]),
    package_data={"ldm": ["modules/encoders/data/*"]},
    py_modules=["main"],
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.1",
        "pytorch-lightning>=2.0",
        "omegaconf>=2.1",
        "einops>=0.6",
        "transformers>=4.30",
        "tokenizers>=0.13",  # imported directly by ldm.modules.encoders.tokenizer.ClipTokenIds
        "numpy",
        "pillow",
        "tqdm",
        "kornia>=0.6",
        "safetensors>=0.3",
    ],
    extras_require={
        # peft: diffusers loads LoRA files only through it (tests/modules/lora compare with diffusers)
        # gradio, playwright: tests/scripts/test_webui.py drives the web UI in Chromium (Debian's chromium package)
        "test": ["pytest>=7", "pytest-timeout", "diffusers>=0.30", "peft", "scipy", "ruff~=0.17.0", "gradio>=6",
                 "playwright"],
        "web": ["gradio>=6"],  # scripts/webui.py
        "openclip": ["open-clip-torch>=2.7"],
        "bench": ["diffusers>=0.30"],
    },
)
