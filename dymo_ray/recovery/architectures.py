"""Encoder and decoder networks of the recovery models, built from a modality spec.

Every network works in model form (see `codec`): images float in [0, 1], text one-hot
(L, V), tabular float in [0, 1]. Per modality kind:

- image (C, H, W): three 3x3 convolutions with 32, 64 and 128 channels, stride 2 while the
  feature map is larger than 4x4 (28x28 -> 14 -> 7 -> 4, 8x8 -> 4 -> 4 -> 4), then a linear
  layer; the decoder mirrors it with transposed convolutions sized to land exactly on
  (H, W). The decoder emits the location of a Laplace likelihood with no output squashing,
  as in the MoPoE PolyMNIST networks of the DyMo authors.
- text (L,) over an alphabet of V characters: a 1-D convolutional sequence model over the
  one-hot positions. The decoder emits per-position logits (L, V) of a categorical
  likelihood.
- tabular (F,): a two-layer MLP each way.

Encoders subclass multivae's `BaseMultilatentEncoder` (itself a pythae `BaseEncoder`) and
return `ModelOutput(embedding, log_covariance)`, plus `style_embedding` and
`style_log_covariance` when a modality-specific latent is requested (MMVAE+, CMVAE).
Decoders subclass pythae's `BaseDecoder` and return `ModelOutput(reconstruction)`.
"""

from __future__ import annotations

import torch
from multivae.models.nn import BaseMultilatentEncoder
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn.base_architectures import BaseDecoder
from torch import nn

from dymo_ray.data.spec import ModalitySpec
from dymo_ray.recovery.codec import model_shape

IMAGE_CHANNELS = (32, 64, 128)
TEXT_CHANNELS = 128


def image_feature_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Return the feature-map size before and after each image convolution.

    A layer uses stride 2 while the smaller side is above 4, else stride 1; a 3x3 kernel with
    padding 1 then maps size s to ceil(s / 2) or keeps it.
    """
    sizes = [(height, width)]
    for _ in IMAGE_CHANNELS:
        h, w = sizes[-1]
        if min(h, w) > 4:
            sizes.append(((h + 1) // 2, (w + 1) // 2))
        else:
            sizes.append((h, w))
    return sizes


class ImageTrunk(nn.Module):
    """Convolutional feature extractor: (B, C, H, W) -> (B, hidden_dim)."""

    def __init__(self, spec: ModalitySpec, hidden_dim: int) -> None:
        super().__init__()
        channels, height, width = spec.shape
        sizes = image_feature_sizes(height, width)
        layers: list[nn.Module] = []
        in_channels = channels
        for index, out_channels in enumerate(IMAGE_CHANNELS):
            stride = 2 if sizes[index + 1] != sizes[index] else 1
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.ReLU()]
            in_channels = out_channels
        final_h, final_w = sizes[-1]
        layers += [
            nn.Flatten(),
            nn.Linear(IMAGE_CHANNELS[-1] * final_h * final_w, hidden_dim),
            nn.ReLU(),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageHead(nn.Module):
    """Mirror of `ImageTrunk`: (N, input_dim) -> (N, C, H, W) Laplace locations."""

    def __init__(self, spec: ModalitySpec, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        channels, height, width = spec.shape
        sizes = image_feature_sizes(height, width)
        final_h, final_w = sizes[-1]
        layers: list[nn.Module] = [
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, IMAGE_CHANNELS[-1] * final_h * final_w),
            nn.Unflatten(1, (IMAGE_CHANNELS[-1], final_h, final_w)),
            nn.ReLU(),
        ]
        out_channels_list = list(IMAGE_CHANNELS[:-1][::-1]) + [channels]
        in_channels = IMAGE_CHANNELS[-1]
        for step, out_channels in enumerate(out_channels_list):
            source = sizes[len(IMAGE_CHANNELS) - step]
            target = sizes[len(IMAGE_CHANNELS) - step - 1]
            if source == target:
                layers.append(nn.Conv2d(in_channels, out_channels, 3, 1, 1))
            else:
                # A stride-2 transposed 3x3 conv with padding 1 gives 2s - 1 + output_padding,
                # so output_padding in {0, 1} recovers the exact size the encoder halved.
                padding = (target[0] - (2 * source[0] - 1), target[1] - (2 * source[1] - 1))
                layers.append(
                    nn.ConvTranspose2d(in_channels, out_channels, 3, 2, 1, output_padding=padding)
                )
            if step < len(out_channels_list) - 1:
                layers.append(nn.ReLU())
            in_channels = out_channels
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class TextTrunk(nn.Module):
    """1-D convolutional sequence encoder: one-hot (B, L, V) -> (B, hidden_dim)."""

    def __init__(self, spec: ModalitySpec, hidden_dim: int) -> None:
        super().__init__()
        length, vocab_size = model_shape(spec)
        # A bias-free linear map of a one-hot vector is a character embedding lookup.
        self.embed = nn.Linear(vocab_size, TEXT_CHANNELS, bias=False)
        self.convs = nn.Sequential(
            nn.Conv1d(TEXT_CHANNELS, TEXT_CHANNELS, 3, 1, 1),
            nn.ReLU(),
            nn.Conv1d(TEXT_CHANNELS, TEXT_CHANNELS, 3, 1, 1),
            nn.ReLU(),
        )
        self.out = nn.Sequential(
            nn.Flatten(), nn.Linear(TEXT_CHANNELS * length, hidden_dim), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).transpose(1, 2)  # (B, channels, L)
        return self.out(self.convs(tokens))


class TextHead(nn.Module):
    """Sequence decoder: (N, input_dim) -> (N, L, V) categorical logits per position."""

    def __init__(self, spec: ModalitySpec, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        length, vocab_size = model_shape(spec)
        self.expand = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, TEXT_CHANNELS * length),
            nn.Unflatten(1, (TEXT_CHANNELS, length)),
            nn.ReLU(),
        )
        self.convs = nn.Sequential(
            nn.Conv1d(TEXT_CHANNELS, TEXT_CHANNELS, 3, 1, 1),
            nn.ReLU(),
            nn.Conv1d(TEXT_CHANNELS, vocab_size, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.convs(self.expand(z)).transpose(1, 2)


class TabularTrunk(nn.Module):
    """MLP encoder: (B, F) -> (B, hidden_dim)."""

    def __init__(self, spec: ModalitySpec, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(spec.shape[0], hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TabularHead(nn.Module):
    """MLP decoder: (N, input_dim) -> (N, F) likelihood locations."""

    def __init__(self, spec: ModalitySpec, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, spec.shape[0]),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


_TRUNKS = {"image": ImageTrunk, "text": TextTrunk, "tabular": TabularTrunk}
_HEADS = {"image": ImageHead, "text": TextHead, "tabular": TabularHead}


def build_trunk(spec: ModalitySpec, hidden_dim: int) -> nn.Module:
    """Build the feature extractor of a modality: model form (B, ...) -> (B, hidden_dim)."""
    return _TRUNKS[spec.kind](spec, hidden_dim)


class RecoveryEncoder(BaseMultilatentEncoder):
    """Posterior network of one modality for multivae models.

    Returns the mean and log-variance of the shared latent and, when `style_dim` > 0, of the
    modality-specific latent. For MMVAE+ and CMVAE multivae maps the second output through
    a softmax to a Laplace scale, so "log_covariance" is multivae's field name, not always a
    log-variance.
    """

    def __init__(
        self, spec: ModalitySpec, latent_dim: int, style_dim: int, hidden_dim: int
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.style_dim = style_dim
        self.trunk = build_trunk(spec, hidden_dim)
        self.mean = nn.Linear(hidden_dim, latent_dim)
        self.log_covariance = nn.Linear(hidden_dim, latent_dim)
        if style_dim > 0:
            self.style_mean = nn.Linear(hidden_dim, style_dim)
            self.style_log_covariance = nn.Linear(hidden_dim, style_dim)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features = self.trunk(x)
        output = ModelOutput(
            embedding=self.mean(features), log_covariance=self.log_covariance(features)
        )
        if self.style_dim > 0:
            output["style_embedding"] = self.style_mean(features)
            output["style_log_covariance"] = self.style_log_covariance(features)
        return output


class RecoveryDecoder(BaseDecoder):
    """Likelihood network of one modality for multivae models.

    Accepts latents with any leading dimensions (..., input_dim) and returns
    `ModelOutput(reconstruction=...)` of shape (..., *model_shape(spec)).
    """

    def __init__(self, spec: ModalitySpec, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.head = _HEADS[spec.kind](spec, input_dim, hidden_dim)

    def forward(self, z: torch.Tensor) -> ModelOutput:
        leading = z.shape[:-1]
        flat = self.head(z.reshape(-1, z.shape[-1]))
        return ModelOutput(reconstruction=flat.reshape(*leading, *flat.shape[1:]))
