"""The mask-aware fusion backbone: encoders per modality, then a transformer over the tokens.

Mask convention: a subset is a bool tensor over the modalities in card order, True = the
modality is used (the same convention as `present`, True = observed). It has shape (M,),
shared by the whole batch, or (B, M), one subset per row.

The model computes f(x, S) -> (logits z, embedding h) in two stages:

* `encode(inputs)` runs every modality's encoder and its own LayerNorm and concatenates the
  tokens (B, N, d). It does not depend on the subset, so a batch is encoded once and the
  tokens are reused for every subset it is evaluated under.
* `fuse(tokens, subset)` zeroes the tokens of modalities outside S and adds a learned
  modality embedding. It prepends a CLS token, adds a learned positional embedding over the
  N + 1 positions and runs pre-norm transformer blocks with an additive attention bias of
  -1e9 on the keys of modalities outside S. The CLS output feeds a linear classifier (z)
  and a linear projection head (h, L2-normalised in cosine mode).

Because the keys outside S are masked and no token of S reads them, `fuse` runs the
transformer on the CLS token and the tokens of S alone, each keeping its own positional and
modality embedding. The CLS output is the same up to float rounding, because a bias of -1e9
gives an attention weight of exactly 0 in float32. Since only the CLS output is read, the
last block also computes the CLS row alone. `_fuse_full_masked` keeps the literal masked
computation on every position for the tests that prove both shortcuts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dymo_ray.data.spec import DatasetCard
from dymo_ray.models.encoders import build_encoder

METRICS = ("cosine", "euclidean")

# Additive attention bias on the keys of modalities outside the subset.
MASK_BIAS = -1e9


@dataclass
class BackboneConfig:
    """Shape of the fusion backbone.

    Attributes:
        width: Token width d of every encoder output and of the transformer.
        heads: Attention heads; must divide `width`.
        blocks: Transformer blocks.
        projection_dim: Size D of the embedding h from the projection head.
        mlp_ratio: Hidden size of each block's MLP, as a multiple of `width`.
        metric: "cosine" (h is L2-normalised, similarity is the dot product) or "euclidean"
            (h is raw, similarity is minus the squared distance).
    """

    width: int = 128
    heads: int = 4
    blocks: int = 2
    projection_dim: int = 64
    mlp_ratio: int = 4
    metric: str = "cosine"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid backbone config: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """List what is wrong with this config (empty when valid)."""
        problems = []
        for name in ("width", "heads", "blocks", "projection_dim", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not problems and self.width % self.heads != 0:
            problems.append(f"heads ({self.heads}) must divide width ({self.width})")
        if self.metric not in METRICS:
            problems.append(f"metric {self.metric!r} is not one of {list(METRICS)}")
        return problems

    @classmethod
    def for_card(cls, card: DatasetCard, **overrides: Any) -> BackboneConfig:
        """Return the default config for a dataset card.

        Cards whose modalities are all 3x28x28 images (PolyMNIST) get the authors' PolyMNIST
        sizes (width 128, 4 heads, 2 blocks, projection 64). Any other card gets a smaller
        model (width 64, 2 heads, 2 blocks, projection 32).

        Args:
            card: The dataset card.
            **overrides: Fields to set on top of the defaults.
        """
        polymnist_like = all(
            spec.kind == "image" and spec.shape == (3, 28, 28) for spec in card.modalities
        )
        defaults: dict[str, Any] = {} if polymnist_like else {
            "width": 64,
            "heads": 2,
            "projection_dim": 32,
        }
        return cls(**{**defaults, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneConfig:
        """Build a config from a dict, rejecting unknown keys.

        Raises:
            ValueError: a key is unknown or a value is invalid.
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown backbone config keys {unknown}; valid keys: {known}")
        return cls(**data)


class Attention(nn.Module):
    """Multi-head self-attention: qkv without bias, output projection with bias."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, queries: int | None = None
    ) -> torch.Tensor:
        """Attend over x (B, T, d); `bias` (B, 1, 1, T) is added to the attention logits.

        With `queries` = n, only the first n positions are queries, while every position is
        still a key and a value. The output (B, n, d) equals the first n rows of the full one.

        Raises:
            ValueError: `queries` is below 1 or above T.
        """
        batch, length, width = x.shape
        head_width = width // self.heads
        if queries is not None and not 1 <= queries <= length:
            raise ValueError(
                f"queries must be between 1 and the {length} positions of x, got {queries}"
            )
        if queries is None:
            qkv = self.qkv(x).reshape(batch, length, 3, self.heads, head_width)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            # Queries only for the first n positions, keys and values for all: the same
            # weights, and nearly a third less projection work when n is 1.
            weight = self.qkv.weight
            q = F.linear(x[:, :queries], weight[:width])
            q = q.reshape(batch, queries, self.heads, head_width).transpose(1, 2)
            kv = F.linear(x, weight[width:]).reshape(batch, length, 2, self.heads, head_width)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        # Scale is (d / heads) ** -0.5, the default of scaled_dot_product_attention.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, q.shape[2], width))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)), no dropout."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
        )

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, cls_only: bool = False
    ) -> torch.Tensor:
        """Return the block output (B, T, d), or only its first (CLS) row (B, 1, d)."""
        if cls_only:
            x = x[:, :1] + self.attn(self.norm1(x), bias, queries=1)
        else:
            x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class FusionBackbone(nn.Module):
    """DyMo backbone f(x, S) -> (logits z, embedding h) over the modalities of a card.

    Subsets and `present` masks are bool, True = the modality is used (observed).

    Attributes:
        card: The dataset card the model was built for.
        config: The backbone config.
        token_counts: Tokens per modality, in card order; N = sum(token_counts).
        num_tokens: N, the tokens of all modalities (the CLS token not included).
    """

    def __init__(self, card: DatasetCard, config: BackboneConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else BackboneConfig.for_card(card)
        self.card = card
        self.config = config
        width = config.width
        names = card.modality_names

        self.encoders = nn.ModuleDict(
            {spec.name: build_encoder(spec, width) for spec in card.modalities}
        )
        self.norms = nn.ModuleDict({name: nn.LayerNorm(width) for name in names})
        self.token_counts = [int(self.encoders[name].num_tokens) for name in names]
        self.num_tokens = sum(self.token_counts)

        self.modality_embedding = nn.Embedding(len(names), width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embedding = nn.Parameter(torch.zeros(1, self.num_tokens + 1, width))
        self.blocks = nn.ModuleList(
            [Block(width, config.heads, config.mlp_ratio) for _ in range(config.blocks)]
        )
        self.classifier = nn.Linear(width, card.num_classes)
        self.projection = nn.Linear(width, config.projection_dim)

        # Modality index of every token position (CLS excluded), in card order.
        token_modality = torch.repeat_interleave(
            torch.arange(len(names)), torch.tensor(self.token_counts)
        )
        self.register_buffer("token_modality", token_modality, persistent=False)
        self._kept_positions_cache: dict[tuple[tuple[bool, ...], torch.device], torch.Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        # Linear and Embedding N(0, 0.02^2) with zero bias, LayerNorm 1/0, convs keep the
        # PyTorch default, CLS and positional embedding truncated normal with std 0.02.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)

    @property
    def num_modalities(self) -> int:
        return len(self.token_counts)

    def num_parameters(self) -> int:
        """Return the number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---------------------------------------------------------------- encode

    def encode(
        self,
        inputs: dict[str, torch.Tensor],
        feature_present: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Encode every modality and concatenate the tokens in card order.

        The tokens are neither masked nor given any embedding: they do not depend on the
        subset, so one call serves every subset of the batch.

        Args:
            inputs: Batch per modality name, in storage dtype: image uint8 (B, C, H, W)
                (float in [0, max_value] also works), text int64 (B, L), tabular float32
                (B, F). Keys beyond the card's modalities are ignored.
            feature_present: Optional per-feature presence (B, F) bool of tabular
                modalities, True = observed; tokens of absent features are zero.

        Returns:
            Tokens (B, N, d), each modality's encoder output through its own LayerNorm.

        Raises:
            ValueError: a modality is missing, has the wrong shape or dtype, or the batch
                sizes differ between modalities.
        """
        batch_size = None
        tokens = []
        for spec in self.card.modalities:
            if spec.name not in inputs:
                raise ValueError(
                    f"input for modality {spec.name!r} is missing; got keys {sorted(inputs)}, "
                    f"expected {self.card.modality_names}"
                )
            x = inputs[spec.name]
            if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != spec.shape or x.dim() < 1:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(
                    f"input for modality {spec.name!r} has shape {shape}; "
                    f"expected (batch, {', '.join(str(s) for s in spec.shape)})"
                )
            if batch_size is None:
                batch_size = x.shape[0]
            elif x.shape[0] != batch_size:
                raise ValueError(
                    f"input for modality {spec.name!r} has batch size {x.shape[0]}, "
                    f"but {self.card.modality_names[0]!r} has {batch_size}"
                )
            encoder = self.encoders[spec.name]
            features_given = feature_present is not None and spec.name in feature_present
            if spec.kind == "tabular" and features_given:
                out = encoder(x, feature_present[spec.name])
            else:
                out = encoder(x)
            tokens.append(self.norms[spec.name](out))
        return torch.cat(tokens, dim=1)

    # ---------------------------------------------------------------- fuse

    def fuse(self, tokens: torch.Tensor, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the fusion transformer on encoded tokens under a subset.

        A subset shared by the batch runs the transformer on the CLS token and the tokens of
        the subset only. With per-row subsets, the rows that keep the same number of tokens
        run one such pass together, each row on its own tokens. Both give the output of
        `_fuse_full_masked` up to float rounding.

        Args:
            tokens: Output of `encode`, (B, N, d).
            subset: Bool (M,) shared by the batch or (B, M) per row, True = the modality is
                used. No row may be empty.

        Returns:
            logits (B, C) and embedding h (B, D), L2-normalised in cosine mode.

        Raises:
            ValueError: the shapes do not match the model, or a subset row is empty.
        """
        self._check_fuse_inputs(tokens, subset)
        if subset.dim() == 1:
            cls_output = self._cls_output_shared(tokens, subset)
        else:
            cls_output = self._cls_output_per_row(tokens, subset.to(tokens.device))
        return self._heads(cls_output)

    def _fuse_full_masked(
        self, tokens: torch.Tensor, subset: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference fusion on all N + 1 tokens with the -1e9 key bias (same contract as fuse)."""
        self._check_fuse_inputs(tokens, subset)
        subset = subset.to(tokens.device)
        batch = tokens.shape[0]
        used = subset.reshape(-1, self.num_modalities)[:, self.token_modality]  # (1 or B, N)
        x = torch.where(used.unsqueeze(-1), tokens, 0.0)
        x = x + self.modality_embedding(self.token_modality)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1) + self.position_embedding

        # The CLS token is always used; its key gets no bias.
        used_keys = torch.cat([torch.ones_like(used[:, :1]), used], dim=1)
        bias = torch.zeros(used_keys.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~used_keys, MASK_BIAS)
        bias = bias.expand(batch, -1)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        return self._heads(x[:, 0])

    def _check_fuse_inputs(self, tokens: torch.Tensor, subset: torch.Tensor) -> None:
        # Checks run where the subset lives: a CPU subset costs no device sync.
        if tokens.dim() != 3 or tokens.shape[1:] != (self.num_tokens, self.config.width):
            raise ValueError(
                f"tokens must have shape (batch, {self.num_tokens}, {self.config.width}) "
                f"as returned by encode, got {tuple(tokens.shape)}"
            )
        if subset.dtype != torch.bool:
            raise ValueError(
                f"subset must be a bool tensor (True = used), got dtype {subset.dtype}"
            )
        valid_shape = subset.shape == (self.num_modalities,) or subset.shape == (
            tokens.shape[0],
            self.num_modalities,
        )
        if not valid_shape:
            raise ValueError(
                f"subset must have shape ({self.num_modalities},) or "
                f"({tokens.shape[0]}, {self.num_modalities}), got {tuple(subset.shape)}"
            )
        if not bool(subset.any(dim=-1).all()):
            raise ValueError("a subset row is empty; every subset needs at least one modality")

    def _kept_token_positions(self, subset: torch.Tensor) -> torch.Tensor:
        # Token positions (0-based, CLS excluded) of the modalities in a shared subset, cached
        # per subset and device because the same few subsets come back every batch.
        device = self.token_modality.device
        key = (tuple(bool(v) for v in subset.tolist()), device)
        kept_positions = self._kept_positions_cache.get(key)
        if kept_positions is None:
            kept_positions = torch.nonzero(subset.to(device)[self.token_modality]).flatten()
            self._kept_positions_cache[key] = kept_positions
        return kept_positions

    def _cls_output_shared(self, tokens: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
        # Exact token dropping: the tokens outside the subset are keys with weight 0 in the
        # masked computation and nothing reads their outputs, so leaving them out changes
        # nothing but float rounding.
        kept_positions = self._kept_token_positions(subset)
        batch = tokens.shape[0]
        x = tokens.index_select(1, kept_positions)
        x = x + self.modality_embedding(self.token_modality[kept_positions])
        x = x + self.position_embedding[:, 1:].index_select(1, kept_positions)
        cls = (self.cls_token + self.position_embedding[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        return self._run_blocks(x)

    def _cls_output_per_row(self, tokens: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
        # Token dropping with a subset per row. Rows that keep the same number of tokens form
        # one group and run one pass, each row gathering its own kept tokens and embeddings,
        # so no padding is needed. Outputs are put back in row order by inverting the grouping
        # permutation (index ops keep autograd intact).
        used = subset[:, self.token_modality]  # (B, N)
        kept_counts = used.sum(dim=1)
        outputs, rows = [], []
        for count in torch.unique(kept_counts).tolist():
            members = torch.nonzero(kept_counts == count).flatten()
            # nonzero lists positions row by row in increasing order: exactly `count` per row.
            kept_positions = torch.nonzero(used.index_select(0, members))[:, 1].reshape(-1, count)
            gather_index = kept_positions.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            x = torch.gather(tokens.index_select(0, members), 1, gather_index)
            x = x + self.modality_embedding(self.token_modality[kept_positions])
            x = x + self.position_embedding[0, 1:][kept_positions]
            cls = (self.cls_token + self.position_embedding[:, :1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
            outputs.append(self._run_blocks(x))
            rows.append(members)
        if len(outputs) == 1:
            return outputs[0]  # one group contains every row, already in row order
        order = torch.argsort(torch.cat(rows))
        return torch.cat(outputs, dim=0).index_select(0, order)

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        # Only the CLS output is read, so the last block computes the CLS row alone: the other
        # rows of its attention and MLP would be discarded. Earlier blocks run in full,
        # because the last block attends to their outputs at every position.
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            x = block(x, cls_only=index == last)
        return x[:, 0]

    def _heads(self, cls_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(cls_output)
        embedding = self.projection(cls_output)
        if self.config.metric == "cosine":
            embedding = F.normalize(embedding, dim=-1)
        return logits, embedding

    # ---------------------------------------------------------------- forward

    def forward_subsets(
        self,
        inputs: dict[str, torch.Tensor],
        subsets: torch.Tensor,
        feature_present: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the batch once and fuse it under each of A subsets.

        Args:
            inputs: Batch per modality name, as for `encode`.
            subsets: Bool (A, M), True = used; each row is shared by the whole batch. Keep
                it on the CPU: each subset is read on the host to pick its tokens, which
                costs a device sync per subset when it lives on a GPU.
            feature_present: As for `encode`.

        Returns:
            logits (A, B, C) and embeddings (A, B, D).

        Raises:
            ValueError: bad inputs (see `encode`), or `subsets` is not (A, M) bool with
                non-empty rows.
        """
        if subsets.dim() != 2 or subsets.shape[1] != self.num_modalities or subsets.shape[0] < 1:
            raise ValueError(
                f"subsets must have shape (A, {self.num_modalities}) with A >= 1, "
                f"got {tuple(subsets.shape)}"
            )
        tokens = self.encode(inputs, feature_present)
        results = [self.fuse(tokens, subset) for subset in subsets]
        logits = torch.stack([logits for logits, _ in results])
        embeddings = torch.stack([embedding for _, embedding in results])
        return logits, embeddings

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        subset: torch.Tensor | None = None,
        subsets: torch.Tensor | None = None,
        feature_present: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute `fuse(encode(inputs), subset)`, or `forward_subsets` when `subsets` is given.

        Training code wrapped in DistributedDataParallel must go through this method (DDP
        only synchronises gradients of calls to the wrapper), so it calls
        `model(inputs, subsets=subsets)` to encode once and fuse under every subset.

        Args:
            inputs: Batch per modality name, as for `encode`.
            subset: Bool (M,) or (B, M), True = used. Exactly one of `subset` and `subsets`.
            subsets: Bool (A, M) of subsets each shared by the batch.
            feature_present: As for `encode`.

        Returns:
            With `subset`: logits (B, C) and embedding (B, D). With `subsets`: logits
            (A, B, C) and embeddings (A, B, D).

        Raises:
            ValueError: neither or both of `subset` and `subsets` are given, or bad inputs.
        """
        if (subset is None) == (subsets is None):
            raise ValueError("pass exactly one of subset (M,) / (B, M) and subsets (A, M)")
        if subsets is not None:
            return self.forward_subsets(inputs, subsets, feature_present)
        return self.fuse(self.encode(inputs, feature_present), subset)
