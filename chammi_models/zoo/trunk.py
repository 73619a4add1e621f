"""The shared ConvNeXt trunk: timm's ConvNeXt minus its first convolution and its classification head.

Every convolutional model in the zoo is ``first_layer -> trunk``. The first layer maps an image with any
channels to the stem width (96 for ``convnext_tiny``) at 1/4 resolution; the trunk applies the stem's
LayerNorm, the four stages, and a global average pool of the last stage. The pool is taken BEFORE the head's
LayerNorm, as in the CHAMMI models, so the head is dropped entirely and its parameters are not counted: for
``convnext_tiny`` the trunk plus a 3-input stem conv is the bare 27,818,592-parameter network.

Trunks are always created with ``pretrained=False``: this module never downloads anything. Pretrained
weights come from a local file through :mod:`chammi_models.zoo.pretrained`.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

#: The parameter count of the bare ``convnext_tiny`` trunk (stem conv with 3 inputs + stem norm + stages).
CONVNEXT_TINY_PARAMS = 27_818_592


def make_timm_convnext(backbone: str, in_chans: int = 3) -> nn.Module:
    """Create a randomly initialised timm ConvNeXt (never downloads), without a classifier.

    Raises ``ValueError`` naming the valid choices for a name that is not a timm ConvNeXt variant.
    """
    if not backbone.startswith("convnext") or backbone not in timm.list_models("convnext*"):
        valid = ", ".join(timm.list_models("convnext*"))
        raise ValueError(f"backbone {backbone!r} is not a timm ConvNeXt variant; valid backbones: {valid}")
    return timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)


class ConvNeXtTrunk(nn.Module):
    """Stem norm + ConvNeXt stages + global average pool.

    ``forward(x)``: x (B, stem_dim, H/4, W/4), the output of a first layer -> features (B, num_features).
    State-dict keys match timm's (``stem_norm.*`` <- ``stem.1.*``, ``stages.*`` <- ``stages.*``) through
    :meth:`load_timm_state_dict`.
    """

    def __init__(self, backbone: str = "convnext_tiny") -> None:
        super().__init__()
        net = make_timm_convnext(backbone)
        stem_conv = net.stem[0]
        self.backbone = backbone
        self.stem_dim: int = stem_conv.out_channels
        #: kernel size == stride of the patchify stem (4 for every ConvNeXt variant)
        self.patch_size: int = int(stem_conv.kernel_size[0])
        self.stem_norm = net.stem[1]
        self.stages = net.stages
        self.num_features: int = int(net.num_features)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, stem_dim, h, w) -> last-stage feature map (B, num_features, h/8, w/8)."""
        return self.stages(self.stem_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, stem_dim, h, w) -> pooled features (B, num_features), before any head norm."""
        return self.forward_map(x).mean(dim=(2, 3))

    def load_timm_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy the stem norm and stages from a timm ConvNeXt state dict (head and stem conv ignored).

        Raises ``ValueError`` listing missing keys or mismatched shapes when the checkpoint does not fit.
        """
        own = {}
        for key in self.state_dict():
            src = "stem.1." + key[len("stem_norm.") :] if key.startswith("stem_norm.") else key
            if src not in state:
                own[key] = None
                continue
            own[key] = state[src]
        missing = [k for k, v in own.items() if v is None]
        if missing:
            raise ValueError(
                f"checkpoint does not fit backbone {self.backbone!r}: {len(missing)} trunk tensors missing, "
                f"e.g. {missing[:5]}"
            )
        shapes = [
            (k, tuple(v.shape), tuple(p.shape))
            for (k, v), p in zip(own.items(), self.state_dict().values(), strict=True)
            if v.shape != p.shape
        ]
        if shapes:
            raise ValueError(f"checkpoint shapes do not fit backbone {self.backbone!r}: {shapes[:5]}")
        self.load_state_dict(own, strict=True)


def make_stem_conv(in_chans: int, trunk: ConvNeXtTrunk, bias: bool = True) -> nn.Conv2d:
    """A patchify conv (in_chans -> stem_dim, kernel = stride = patch size), like timm's ``stem[0]``."""
    p = trunk.patch_size
    return nn.Conv2d(in_chans, trunk.stem_dim, kernel_size=p, stride=p, bias=bias)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters())
