"""Encoders that turn one modality's input into tokens for the fusion backbone.

Every encoder maps a batch in the modality's storage dtype to tokens (B, P, d), where the
token count P is fixed by the modality spec at build time and exposed as `num_tokens`.
Encoders never see the subset: masking happens in the fusion backbone, which is what lets a
batch be encoded once and reused for every subset.
"""

from __future__ import annotations

import torch
from torch import nn

from dymo_ray.data.spec import ModalitySpec

# Channels of the stride-2 stages of the image encoder (the PolyMNIST design).
IMAGE_STAGE_CHANNELS = (32, 64, 128)


def _conv_output_size(size: int) -> int:
    # A 3x3 conv with stride 2 and padding 1 maps a side of length s to ceil(s / 2).
    return (size + 1) // 2


class ImageEncoder(nn.Module):
    """CNN encoder for an image modality of any shape (C, H, W).

    For 3x28x28 this is the PolyMNIST encoder: three 3x3 stride-2 convs (32, 64, 128
    channels, ReLU), a 1x1 conv to the token width and a 2x2 max-pool, giving a 2x2 grid of
    4 tokens. Smaller images use fewer stride-2 stages, so that the grid after the stages is
    at least 2x2 where the image allows it, and skip the pool when the grid is smaller than
    4x4. A 1x8x8 image gets two stages and no pool, so 4 tokens.

    Inputs are uint8 (or float, for recovered images) in [spec.min_value, spec.max_value] and
    are scaled by 1 / spec.max_value.

    Attributes:
        num_tokens: Tokens per sample, the cells of the final grid.
        grid_size: (height, width) of the final grid.
    """

    def __init__(self, spec: ModalitySpec, width: int) -> None:
        super().__init__()
        if spec.kind != "image":
            raise ValueError(
                f"ImageEncoder needs an image modality, got {spec.name!r} of kind {spec.kind!r}"
            )
        channels, grid_height, grid_width = spec.shape
        self.spec = spec
        # A max_value of 0 (an all-zero image modality) leaves the values unscaled.
        self.max_value = spec.max_value if spec.max_value > 0 else 1.0

        # Use as many of the stages as keep the grid at least 2x2 (zero stages for a side of 1).
        layers: list[nn.Module] = []
        in_channels = channels
        for out_channels in IMAGE_STAGE_CHANNELS:
            next_height = _conv_output_size(grid_height)
            next_width = _conv_output_size(grid_width)
            if next_height < 2 or next_width < 2:
                break
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.ReLU()]
            in_channels, grid_height, grid_width = out_channels, next_height, next_width
        layers.append(nn.Conv2d(in_channels, width, 1))
        if grid_height >= 4 and grid_width >= 4:
            layers.append(nn.MaxPool2d(2))
            grid_height, grid_width = grid_height // 2, grid_width // 2
        self.net = nn.Sequential(*layers)
        self.grid_size = (grid_height, grid_width)
        self.num_tokens = grid_height * grid_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images (B, C, H, W) to tokens (B, P, d), in row-major grid order."""
        features = self.net(x.float() / self.max_value)
        return features.flatten(2).transpose(1, 2)


class TextEncoder(nn.Module):
    """Character-level encoder for a text modality of L character indices.

    Embedding of the indices (vocabulary = spec.vocab_size), two 1-D convs of kernel 3 (the
    second with stride 2) with ReLU, then a max-pool over positions down to 2 tokens (1 token
    for texts shorter than 4 characters).

    Attributes:
        num_tokens: Tokens per sample.
    """

    def __init__(self, spec: ModalitySpec, width: int) -> None:
        super().__init__()
        if spec.kind != "text":
            raise ValueError(
                f"TextEncoder needs a text modality, got {spec.name!r} of kind {spec.kind!r}"
            )
        self.spec = spec
        self.vocab_size = spec.vocab_size
        (length,) = spec.shape
        self.num_tokens = 2 if length >= 4 else 1
        self.embedding = nn.Embedding(self.vocab_size, width)
        self.convs = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveMaxPool1d(self.num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode character indices (B, L) to tokens (B, P, d).

        Raises:
            ValueError: the indices are not integers, or one is outside [0, vocab_size).
        """
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(
                f"modality {self.spec.name!r}: text needs integer character indices, "
                f"got dtype {x.dtype}"
            )
        # NOTE: this check reads the tensor on the host, one device sync per batch on a GPU. An
        # out-of-range index would otherwise be an opaque device-side assert.
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(
                f"modality {self.spec.name!r}: character indices must lie in "
                f"[0, {self.vocab_size}), got values in [{int(x.min())}, {int(x.max())}]"
            )
        features = self.embedding(x.long()).transpose(1, 2)
        return self.pool(self.convs(features)).transpose(1, 2)


class TabularEncoder(nn.Module):
    """Per-feature encoder for a tabular modality of F float features: one token per feature.

    Token f is `value_f * weight_f + bias_f`, with a learned vector weight_f and bias_f per
    feature. Both start as N(0, 0.02^2), because a zero bias would leave only the sign of the
    value after the modality's LayerNorm.

    Per-feature absence is handled here and whole-modality absence by the fusion mask. When
    `feature_present` is given, the token of an absent feature is set to zero, so that neither
    its stored value (which may be NaN) nor its bias reaches the backbone. After the
    modality's LayerNorm such a token is the LayerNorm bias: one learned "absent" vector,
    which the positional embedding makes distinct per feature.

    Attributes:
        num_tokens: Tokens per sample, equal to F.
    """

    def __init__(self, spec: ModalitySpec, width: int) -> None:
        super().__init__()
        if spec.kind != "tabular":
            raise ValueError(
                f"TabularEncoder needs a tabular modality, got {spec.name!r} of kind {spec.kind!r}"
            )
        self.spec = spec
        (num_features,) = spec.shape
        self.num_tokens = num_features
        self.feature_weight = nn.Parameter(torch.empty(num_features, width))
        self.feature_bias = nn.Parameter(torch.empty(num_features, width))
        nn.init.normal_(self.feature_weight, std=0.02)
        nn.init.normal_(self.feature_bias, std=0.02)

    def forward(self, x: torch.Tensor, feature_present: torch.Tensor | None = None) -> torch.Tensor:
        """Encode features (B, F) to tokens (B, F, d).

        Args:
            x: Float features (B, F).
            feature_present: Optional bool (B, F), True = the feature is observed. Tokens of
                absent features are zero.

        Raises:
            ValueError: `feature_present` does not have the shape of `x`.
        """
        x = x.float()
        if feature_present is None:
            return x.unsqueeze(-1) * self.feature_weight + self.feature_bias
        if feature_present.shape != x.shape:
            raise ValueError(
                f"modality {self.spec.name!r}: feature_present must have shape {tuple(x.shape)}, "
                f"got {tuple(feature_present.shape)}"
            )
        present = feature_present.bool().unsqueeze(-1)
        # torch.where, not a product: 0 * NaN is NaN, so a product would let a NaN stored for
        # an absent value through.
        values = torch.where(present, x.unsqueeze(-1), 0.0)
        tokens = values * self.feature_weight + self.feature_bias
        return torch.where(present, tokens, 0.0)


ENCODERS: dict[str, type[nn.Module]] = {
    "image": ImageEncoder,
    "text": TextEncoder,
    "tabular": TabularEncoder,
}


def build_encoder(spec: ModalitySpec, width: int) -> nn.Module:
    """Build the encoder of one modality from its spec.

    Args:
        spec: The modality spec; `spec.kind` picks the encoder.
        width: Token width d.

    Returns:
        An encoder mapping a batch of this modality to tokens (B, num_tokens, width), with an
        int attribute `num_tokens`.

    Raises:
        ValueError: the kind has no encoder, or `width` < 1.
    """
    if width < 1:
        raise ValueError(f"token width must be >= 1, got {width}")
    if spec.kind not in ENCODERS:
        raise ValueError(
            f"no encoder for modality {spec.name!r} of kind {spec.kind!r}; "
            f"valid kinds: {sorted(ENCODERS)}"
        )
    return ENCODERS[spec.kind](spec, width)
