"""sfplan: long-horizon visual planning with a learned video world model (SlowFast-VGen).

`envs/`, `planners/` and `configs/` live at the top of the repo but install as
`sfplan.envs`, `sfplan.planners` and `sfplan.configs`, so no generic module names leak
into site-packages (editable installs honour `package_dir`).
"""
from setuptools import setup

PACKAGES = {
    "sfplan": "sfplan",
    "sfplan.world_model": "sfplan/world_model",
    "sfplan.eval": "sfplan/eval",
    "sfplan.data": "sfplan/data",
    "sfplan.training": "sfplan/training",
    "sfplan.memory": "sfplan/memory",
    "sfplan.models": "sfplan/models",
    "sfplan.envs": "envs",
    "sfplan.planners": "planners",
    "sfplan.configs": "configs",
}

setup(
    name="sfplan",
    version="0.1.0",
    description="Long-horizon visual planning with a learned video world model (SlowFast-VGen)",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={
        "sfplan.configs": ["*.yaml", "*/*.yaml"],
        # shipped world models: <task>/{world_model.json, README.md, vae/, diffusion/, scheduler/, idm/}
        "sfplan.models": ["*/*.json", "*/*.md", "*/*/*.json", "*/*/*.safetensors"],
    },
    install_requires=[
        "torch>=2.2",
        "numpy",
        "mujoco>=3.1,<3.10",
        "gymnasium[mujoco]>=1.0",
        "gymnasium-robotics>=1.3",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "imageio>=2.30",
        "imageio-ffmpeg",
        "safetensors",
        "tqdm",
        "h5py>=3.8",
        "tensorboard",
    ],
    extras_require={
        "robosuite": ["robosuite>=1.5"],
        "diffusion": ["diffusers>=0.30", "peft>=0.12", "accelerate>=0.30", "h5py"],
        "minari": ["minari>=0.5"],
        "test": ["pytest>=7"],
        "all": ["robosuite>=1.5", "diffusers>=0.30", "peft>=0.12", "accelerate>=0.30", "h5py", "minari>=0.5",
                "pytest>=7"],
    },
    entry_points={"console_scripts": ["sfplan=sfplan.cli:main"]},
)
