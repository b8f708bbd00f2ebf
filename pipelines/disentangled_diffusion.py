"""`DisentangledDiffusionPipeline` for plain diffusers users.

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(
        "path/or/repo", custom_pipeline="pipelines/disentangled_diffusion.py", trust_remote_code=True
    )

The components (encoder, U-Net, anchorer) are classes of the `diffusers-dyga` package, so it must be installed
(not yet on the package index: `pip install -e .` in a clone of its repository); importing it here also registers
them with diffusers' loader.
"""

from diffusers_dyga import DisentangledDiffusionPipeline

__all__ = ["DisentangledDiffusionPipeline"]
