"""An LPIPS-style perceptual distance from a local pretrained `transformers` vision backbone (for first stages)."""

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """
    Distance between two batches of images in the feature space of a frozen vision backbone: `(batch, C, H, W)`
    images in [-1, 1], twice -> scalar.

    Each stage's feature map is normalised to unit length over its channels at every position; the squared
    differences are summed over channels, averaged over positions and the batch, and summed over stages. This is
    LPIPS without its learned per-channel weights (which need a download). Images are mapped to [0, 1] and
    normalised with the ImageNet mean and std the backbones are trained with; grayscale images are repeated to three
    channels. The backbone is frozen and stays in eval mode.

    Args:
        backbone_name_or_path (`str`): a local folder of a `transformers` backbone (ResNet, ConvNeXt, ...) saved
            with `save_pretrained`; nothing is downloaded.
    """

    def __init__(self, backbone_name_or_path: str):
        super().__init__()
        from transformers import MODEL_FOR_BACKBONE_MAPPING, AutoConfig

        if not (Path(backbone_name_or_path) / "config.json").is_file():
            raise ValueError(
                f"No backbone at {backbone_name_or_path!r}: the perceptual loss needs a local folder saved with "
                "save_pretrained (config.json and weights); nothing is downloaded."
            )
        config = AutoConfig.from_pretrained(backbone_name_or_path, local_files_only=True)
        config.out_features = [name for name in config.stage_names if name != "stem"]
        backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(config)]
        self.backbone = backbone_class.from_pretrained(backbone_name_or_path, config=config, local_files_only=True)
        self.backbone.requires_grad_(False).eval()
        self.num_channels = config.num_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.shape[1] == 1 and self.num_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        pixels = ((images.float() + 1) / 2 - self.mean) / self.std
        maps = self.backbone(pixel_values=pixels).feature_maps
        return [feature / feature.norm(dim=1, keepdim=True).clamp_min(1e-10) for feature in maps]

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if prediction.shape != target.shape:
            raise ValueError(f"PerceptualLoss compares images of one shape, got {tuple(prediction.shape)} and {tuple(target.shape)}.")
        with torch.no_grad():
            target_features = self.features(target)
        return sum(
            (predicted - expected).pow(2).sum(dim=1).mean()
            for predicted, expected in zip(self.features(prediction), target_features)
        )
