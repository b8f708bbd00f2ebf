"""The layout of a saved `DisentangledDiffusionPipeline` folder that plain diffusers loads by repo id.

diffusers resolves a third-party component of a Hub repo only from a module file in the component's own folder (its
documented custom-components layout), and a pipeline class named in `model_index.json` as `[module, class]` from a
module file at the repo's root. So every save writes, beside the weights:

    model_index.json           "_class_name": ["disentangled_diffusion", "DisentangledDiffusionPipeline"]
                               "encoder": ["diffusers_dyga_encoder", "DisentangledEncoder"], ...
    disentangled_diffusion.py  the pipeline file of `pipelines/`
    encoder/diffusers_dyga_encoder.py, unet/diffusers_dyga_skip_dropout_unet.py, anchorer/diffusers_dyga_anchorer.py

Each module file only imports its class from the installed `diffusers-dyga` package. Folders saved before this
layout (`"encoder": ["diffusers_dyga.encoder", ...]`) keep loading with `DisentangledDiffusionPipeline`.
"""

import json
import os

PIPELINE_MODULE = "disentangled_diffusion"
PIPELINE_CLASS = "DisentangledDiffusionPipeline"
COMPONENT_MODULES = {
    "encoder": ("diffusers_dyga_encoder", "DisentangledEncoder"),
    "unet": ("diffusers_dyga_skip_dropout_unet", "SkipDropoutUNet"),
    "anchorer": ("diffusers_dyga_anchorer", "DyGAAnchorer"),
}
INSTALL_HINT = "pip install -e . in a clone of the diffusers-dyga repository (it is not yet on the package index)"

PIPELINE_SOURCE = f'''"""`DisentangledDiffusionPipeline` for plain diffusers users.

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained("user/repo-or-folder", trust_remote_code=True)

A pipeline saved by diffusers-dyga carries this file at its root; for other folders pass this file's path as
`custom_pipeline`. The components (encoder, U-Net, anchorer) are classes of the `diffusers-dyga` package, which must
be installed: {INSTALL_HINT}.
"""

from diffusers_dyga import DisentangledDiffusionPipeline

__all__ = ["DisentangledDiffusionPipeline"]
'''


def component_source(class_name: str) -> str:
    """The module file of a component folder: it imports the component's class from the installed package."""
    return (
        f'"""`{class_name}` for plain diffusers loading (`trust_remote_code=True`); the class is in the '
        f'`diffusers-dyga` package, which must be installed: {INSTALL_HINT}."""\n\n'
        f"from diffusers_dyga import {class_name}\n\n"
        f'__all__ = ["{class_name}"]\n'
    )


def write_hub_layout(folder: str | os.PathLike) -> None:
    """Adds the module files to a folder `DiffusionPipeline.save_pretrained` wrote and points `model_index.json` at
    them. Components the pipeline does not have (`[null, null]`) stay as they are."""
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path) as index_file:
        index = json.load(index_file)
    for name, (module, class_name) in COMPONENT_MODULES.items():
        if index.get(name, [None])[0] is None:
            continue
        with open(os.path.join(folder, name, f"{module}.py"), "w") as module_file:
            module_file.write(component_source(class_name))
        index[name] = [module, class_name]
    with open(os.path.join(folder, f"{PIPELINE_MODULE}.py"), "w") as pipeline_file:
        pipeline_file.write(PIPELINE_SOURCE)
    index["_class_name"] = [PIPELINE_MODULE, PIPELINE_CLASS]
    with open(index_path, "w") as index_file:
        json.dump(index, index_file, indent=2, sort_keys=True)
        index_file.write("\n")
