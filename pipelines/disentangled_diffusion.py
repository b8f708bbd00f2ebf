"""`DisentangledDiffusionPipeline` for plain diffusers users.

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("user/repo-or-folder", trust_remote_code=True)

A pipeline saved by diffusers-dyga carries this file at its root; for other folders pass this file's path as
`custom_pipeline`. The components (encoder, U-Net, anchorer) are classes of the `diffusers-dyga` package, which must
be installed: pip install -e . in a clone of the diffusers-dyga repository (it is not yet on the package index).
"""

from diffusers_dyga import DisentangledDiffusionPipeline

__all__ = ["DisentangledDiffusionPipeline"]
