"""Dynamic Gaussian Anchoring and Skip Dropout for diffusion-based disentangled representation learning.

Importing the package imports every component module, which diffusers needs before it can load a saved
`DisentangledDiffusionPipeline` (it resolves third-party components from already-imported modules only).
"""

from .anchorer import DyGAAnchorer
from .encoder import DisentangledEncoder, DisentangledEncoderOutput
from .pipeline import DisentangledDiffusionPipeline, DisentangledDiffusionPipelineOutput
from .skip_dropout_unet import SkipDropoutUNet

__version__ = "0.1.0"

__all__ = [
    "DisentangledDiffusionPipeline",
    "DisentangledDiffusionPipelineOutput",
    "DisentangledEncoder",
    "DisentangledEncoderOutput",
    "DyGAAnchorer",
    "SkipDropoutUNet",
]
