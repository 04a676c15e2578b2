"""The encoders featstore knows by name: the two ImageNet ResNet-50s and the pathology foundation models that
timm builds, each checked against its model card and against TRIDENT's loader (same names, so features from
TRIDENT and from ``extract`` sit side by side). Weights are the user's own local files (``--weights PATH``);
``weights_from`` says where each is published.

Not here: CONCH v1.5 (a modified iBOT ViT, not timm's), Phikon-v2 (a Hugging Face transformers DINOv2) and
CTransPath (a Swin with its own convolutional stem): none builds from timm parts alone; their TRIDENT features
can be imported (``featstore import-features --encoder conch_v15``).
"""

from __future__ import annotations

import torch
from torch import nn

from featstore.encoders import RESNET50_IMAGENET_FILE, EncoderSpec, register_encoder

HOPTIMUS_MEAN, HOPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
LUNIT_MEAN, LUNIT_STD = (0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464)


def _resnet50(truncated: bool):
    def build():
        from torchvision.models import resnet50

        def head(m: nn.Module) -> nn.Module:
            if truncated:
                return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3,
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
            m.fc = nn.Identity()  # global average pool of layer4: 2048-d
            return m

        return resnet50(weights=None), head

    return build


class ClsAndMeanToken(nn.Module):
    """The CLS token beside the mean of the patch tokens (Virchow's readout): the backbone returns every token
    (global_pool=""), of which the first ``skip`` are the CLS and register tokens."""

    def __init__(self, backbone: nn.Module, skip: int):
        super().__init__()
        self.backbone, self.skip = backbone, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(x)
        return torch.cat([tokens[:, 0], tokens[:, self.skip:].mean(1)], dim=-1)


def _timm(model: str, kwargs: dict, readout: str):
    """A build function for a timm model: never pretrained (weights come from the user's file), no classifier,
    and any input size that is a multiple of the ViT patch (dynamic_img_size), as TRIDENT builds them."""

    def build():
        import timm

        # Layers are named in the spec (it is provenance, so plain text) and resolved here.
        layers = {"SwiGLUPacked": timm.layers.SwiGLUPacked, "SiLU": nn.SiLU}
        kw = {k: layers.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
        if readout == "cls+mean":
            kw["global_pool"] = ""
        backbone = timm.create_model(model, pretrained=False, num_classes=0, dynamic_img_size=True, **kw)
        skip = 1 + int(kwargs.get("reg_tokens", 0))
        return backbone, (lambda m: ClsAndMeanToken(m, skip)) if readout == "cls+mean" else (lambda m: m)

    return build


def timm_preset(name: str, model: str, kwargs: dict, dim: int, description: str, readout: str = "cls",
                patch: int = 16, **spec) -> EncoderSpec:
    return EncoderSpec(name=name, dim=dim, build=_timm(model, kwargs, readout), description=description,
                       architecture=f"timm:{model}", arch_kwargs=tuple(kwargs.items()), readout=readout,
                       patch_multiple=patch, **spec)


PRESETS = [
    EncoderSpec("resnet50", 2048, _resnet50(False),
                "torchvision ResNet-50, global average pool of layer4 (the original study's features)",
                architecture="torchvision:resnet50", readout="pooled", imagenet_file=RESNET50_IMAGENET_FILE,
                weights_from="torchvision IMAGENET1K_V1 (--weights imagenet)"),
    EncoderSpec("resnet50-trunc", 1024, _resnet50(True),
                "torchvision ResNet-50 up to layer3, average pooled (CLAM's and TRIDENT's resnet50)",
                architecture="torchvision:resnet50 (layers 1-3)", readout="pooled", imagenet_file=RESNET50_IMAGENET_FILE,
                weights_from="torchvision IMAGENET1K_V1 (--weights imagenet)"),
    timm_preset("uni_v1", "vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5}, 1024,
                "UNI (Mahmood lab, 2024): ViT-L/16, DINOv2 on 100k slides", native_mpp=0.5, precision="fp16",
                weights_from="huggingface.co/MahmoodLab/UNI (pytorch_model.bin, gated)"),
    timm_preset("uni_v2", "vit_giant_patch14_224",
                {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                 "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "mlp_layer": "SwiGLUPacked",
                 "act_layer": "SiLU", "reg_tokens": 8}, 1536,
                "UNI2-h (Mahmood lab, 2025): ViT-H/14 with SwiGLU and 8 registers", patch=14, native_mpp=0.5,
                precision="bf16", weights_from="huggingface.co/MahmoodLab/UNI2-h (pytorch_model.bin, gated)"),
    timm_preset("virchow2", "vit_huge_patch14_224",
                {"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375,
                 "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}, 2560,
                "Virchow2 (Paige, 2024): ViT-H/14, CLS token beside the mean patch token", readout="cls+mean",
                patch=14, native_mpp=0.5, precision="fp16",
                weights_from="huggingface.co/paige-ai/Virchow2 (pytorch_model.bin, gated)"),
    timm_preset("hoptimus0", "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5}, 1536,
                "H-optimus-0 (Bioptimus, 2024): ViT-g/14 with 4 registers", patch=14, native_mpp=0.5,
                mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, precision="fp16",
                weights_from="huggingface.co/bioptimus/H-optimus-0 (pytorch_model.bin)"),
    timm_preset("hoptimus1", "vit_giant_patch14_reg4_dinov2", {"img_size": 224, "init_values": 1e-5}, 1536,
                "H-optimus-1 (Bioptimus, 2025): ViT-g/14 with 4 registers", patch=14, native_mpp=0.5,
                mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD, precision="fp16",
                weights_from="huggingface.co/bioptimus/H-optimus-1 (pytorch_model.bin, gated)"),
    timm_preset("gigapath", "vit_giant_patch14_dinov2",
                {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                 "mlp_ratio": 5.33334}, 1536,
                "Prov-GigaPath tile encoder (Providence/Microsoft, 2024): ViT-g/16", native_mpp=0.5, precision="fp16",
                weights_from="huggingface.co/prov-gigapath/prov-gigapath (pytorch_model.bin, gated)"),
    timm_preset("lunit-vits8", "vit_small_patch8_224", {"img_size": 224}, 384,
                "Lunit DINO ViT-S/8 (Lunit, 2023)", patch=8, native_mpp=0.5, mean=LUNIT_MEAN, std=LUNIT_STD,
                weights_from="huggingface.co/1aurent/vit_small_patch8_224.lunit_dino (model.safetensors)"),
]
for _spec in PRESETS:
    register_encoder(_spec)

# TRIDENT's names for features made with the same models, where they differ from ours.
TRIDENT_NAMES = {"resnet50": "resnet50-trunc"}
