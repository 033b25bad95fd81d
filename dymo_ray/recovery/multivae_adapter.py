"""Recovery models backed by multivae: MoPoE (default), MMVAE+ and CMVAE.

The adapters build multivae models from a dataset card with the networks of
`architectures`, convert batches between storage form and model form at the boundary
(`codec`), and generate missing modalities with `model.predict(cond_mod, gen_mod)`.

Settings follow the DyMo authors' multivae training scripts where those are known:
- MoPoE on PolyMNIST: one shared latent (512 dimensions there), Laplace decoders with scale
  0.75, beta 2.5.
- MMVAE+ and CMVAE: a shared latent of 32 plus a modality-specific latent of 32, Laplace
  decoders with scale 0.75, Laplace prior and posterior ("laplace_with_softmax"), beta 2.5,
  K = 1, loss "iwae_looser" and learned modality priors. CMVAE has 40 clusters.

Deliberate differences:
- MoPoE's default shared latent is 64, not 512, to fit the CPU training budget. On 5
  PolyMNIST modalities at batch 256 with 2 CPU threads, a training step took 0.46 s at
  latent 64 (hidden 256) and 0.99 s at latent 512 (hidden 512), the fastest of 7 steps
  each (2026-12-04). Pass `latent_dim=512, hidden_dim=512` for the authors' size.
- Text uses multivae's "categorical" likelihood on one-hot targets, and the recovered text
  is the argmax of the decoder's per-position logits.
- Reconstruction terms are rescaled so that every modality counts as much as the one with
  the most likelihood terms (pixels, positions or features). The five equal PolyMNIST
  images all get factor 1, as in the authors' setup. On mixed cards the rescaling keeps an
  8-character text from being drowned by a 784-pixel image.
- Inside multivae, modalities are keyed "m0", "m1", ... in card order, because MoPoE names
  a subset by joining modality names with "_" and card names may contain "_".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from multivae.data.datasets.base import MultimodalBaseDataset
from multivae.models import CMVAE, MMVAEPlus, MoPoE, CMVAEConfig, MMVAEPlusConfig, MoPoEConfig
from multivae.models.base import BaseMultiVAE
from torch import nn

from dymo_ray.data.spec import DatasetCard, ModalitySpec
from dymo_ray.recovery.architectures import RecoveryDecoder, RecoveryEncoder
from dymo_ray.recovery.base import Recovery, check_batch, seeded_rng
from dymo_ray.recovery.codec import from_model_form, model_shape, to_model_form


@dataclass
class MultivaeRecoveryConfig:
    """Settings of a multivae recovery model.

    Attributes:
        latent_dim: Size of the shared latent.
        style_dim: Size of each modality-specific latent (0 = none, as in MoPoE).
        hidden_dim: Width of the layer between each network's trunk and its latent heads.
        beta: Weight of the divergence term.
        laplace_scale: Fixed scale of the Laplace likelihood of image and tabular modalities,
            on the [0, 1] value scale.
        importance_samples: K, latent samples per input in the IWAE-style losses of MMVAE+
            and CMVAE (K = 1 is the ELBO).
        num_clusters: Number of clusters of CMVAE.
        use_posterior_mean: Decode the posterior mean instead of a sample when recovering.
            The DyMo authors sample; the mean makes recovery deterministic without a seed.
        init_seed: Seed of the weight initialisation.
    """

    latent_dim: int = 64
    style_dim: int = 0
    hidden_dim: int = 256
    beta: float = 2.5
    laplace_scale: float = 0.75
    importance_samples: int = 1
    num_clusters: int = 40
    use_posterior_mean: bool = False
    init_seed: int = 0

    def problems(self) -> list[str]:
        """List invalid values (empty when valid)."""
        problems = []
        for key in ("latent_dim", "hidden_dim", "importance_samples", "num_clusters"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.style_dim < 0:
            problems.append(f"style_dim must be >= 0, got {self.style_dim}")
        if not self.beta > 0:
            problems.append(f"beta must be > 0, got {self.beta}")
        if not self.laplace_scale > 0:
            problems.append(f"laplace_scale must be > 0, got {self.laplace_scale}")
        return problems


def likelihood_terms(spec: ModalitySpec) -> int:
    """Return how many log-likelihood terms one sample of a modality adds up."""
    if spec.kind == "text":
        return spec.shape[0]  # one categorical term per position
    return math.prod(spec.shape)


class MultivaeRecovery(Recovery):
    """Recovery with a multivae multimodal VAE. Subclasses fix the model class.

    Attributes:
        config: The `MultivaeRecoveryConfig` the model was built with.
        model: The multivae model (an `nn.Module`). Train it with `loss` and move it with `to`.
    """

    model_class: ClassVar[type[BaseMultiVAE]]
    defaults: ClassVar[dict[str, Any]] = {}
    # Config fields that mean nothing for this model; setting them is an error.
    unused_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, card: DatasetCard, config: MultivaeRecoveryConfig) -> None:
        super().__init__(card)
        problems = config.problems()
        if problems:
            raise ValueError(f"invalid {self.name} recovery config: " + "; ".join(problems))
        self.config = config
        self.keys = {spec.name: f"m{index}" for index, spec in enumerate(card.modalities)}
        # Build under a fixed seed, so the weights (and CMVAE's random cluster means) are the
        # same on every Ray worker and in every test, and the global RNG is left untouched.
        with seeded_rng(config.init_seed, torch.device("cpu")):
            self.model = self._build_model()

    @classmethod
    def from_options(cls, card: DatasetCard, **options: Any) -> MultivaeRecovery:
        """Build from keyword options over this model's defaults.

        Raises:
            ValueError: an option is unknown, unused by this model, or invalid.
        """
        valid = [f.name for f in dataclasses.fields(MultivaeRecoveryConfig)]
        valid = [key for key in valid if key not in cls.unused_fields]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown options {unknown} for recovery model {cls.name!r}; valid options: "
                f"{valid}"
            )
        return cls(card, MultivaeRecoveryConfig(**{**cls.defaults, **options}))

    # ----- construction -------------------------------------------------------------------

    def _multivae_config(self) -> dict[str, Any]:
        """Return the keyword arguments shared by the multivae configs."""
        specs = self.card.modalities
        most_terms = max(likelihood_terms(spec) for spec in specs)
        distributions, parameters = {}, {}
        for spec in specs:
            key = self.keys[spec.name]
            if spec.kind == "text":
                distributions[key] = "categorical"
            else:
                distributions[key] = "laplace"
                parameters[key] = {"scale": self.config.laplace_scale}
        return {
            "n_modalities": len(specs),
            "latent_dim": self.config.latent_dim,
            "input_dims": {self.keys[spec.name]: model_shape(spec) for spec in specs},
            "decoders_dist": distributions,
            "decoder_dist_params": parameters,
            "uses_likelihood_rescaling": True,
            "rescale_factors": {
                self.keys[spec.name]: most_terms / likelihood_terms(spec) for spec in specs
            },
        }

    def _networks(self) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
        style_dim = self.config.style_dim
        encoders, decoders = {}, {}
        for spec in self.card.modalities:
            key = self.keys[spec.name]
            encoders[key] = RecoveryEncoder(
                spec, self.config.latent_dim, style_dim, self.config.hidden_dim
            )
            decoders[key] = RecoveryDecoder(
                spec, self.config.latent_dim + style_dim, self.config.hidden_dim
            )
        return encoders, decoders

    def _build_model(self) -> BaseMultiVAE:
        raise NotImplementedError

    # ----- Recovery interface -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> MultivaeRecovery:
        """Move the model to `device` and return self."""
        self.model.to(device)
        return self

    def config_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self.config)
        return {key: value for key, value in values.items() if key not in self.unused_fields}

    def model_inputs(self, inputs: dict[str, torch.Tensor]) -> MultimodalBaseDataset:
        """Convert a complete storage-form batch to the multivae input on `self.device`.

        Raises:
            ValueError, TypeError: the batch does not match the card (see `check_batch`).
        """
        first = inputs.get(self.card.modality_names[0]) if isinstance(inputs, dict) else None
        batch_size = len(first) if first is not None else 0
        present = torch.ones((batch_size, self.card.num_modalities), dtype=torch.bool)
        check_batch(self.card, inputs, present)
        data = {
            self.keys[spec.name]: to_model_form(spec, inputs[spec.name].to(self.device))
            for spec in self.card.modalities
        }
        return MultimodalBaseDataset(data=data)

    def loss(
        self, inputs: dict[str, torch.Tensor], model: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Compute the training loss of a complete batch.

        Args:
            inputs: Complete storage-form batch, one tensor (B, *shape) per modality.
            model: The module to run, e.g. `self.model` wrapped for data-parallel training;
                defaults to `self.model`.

        Returns:
            The loss averaged over the batch (a scalar to call `backward` on), and its terms
            as floats: "loss", plus for MoPoE "recon/<modality>" and "kl".
        """
        batch = self.model_inputs(inputs)
        batch_size = len(batch)
        output = (model or self.model)(batch)
        # MoPoE's `loss` is a batch mean and MMVAE+/CMVAE's a batch sum, while `loss_sum` is
        # the sum for all three.
        loss = output.loss_sum / batch_size
        terms = {"loss": float(loss.detach())}
        names = {key: name for name, key in self.keys.items()}
        for key, value in output.metrics.items():
            value = value.detach() if isinstance(value, torch.Tensor) else value
            if key.startswith("recon_") and key[len("recon_") :] in names:
                terms[f"recon/{names[key[len('recon_') :]]}"] = float(value)
            elif key == "joint_divergence":
                terms["kl"] = float(value)
        return loss, terms

    def _generate(
        self, observed: dict[str, torch.Tensor], missing: list[str], batch_size: int
    ) -> dict[str, torch.Tensor]:
        data = {}
        for spec in self.card.modalities:
            key = self.keys[spec.name]
            if spec.name in observed:
                data[key] = to_model_form(spec, observed[spec.name])
            else:
                # MoPoE encodes every modality it is given before picking the subset
                # posterior, so missing ones get zeros that no conditioning ever reads.
                data[key] = torch.zeros((batch_size, *model_shape(spec)), device=self.device)
        cond_mod = [self.keys[name] for name in self.card.modality_names if name in observed]
        gen_mod = [self.keys[name] for name in missing]

        was_training = self.model.training
        try:
            with torch.no_grad():
                output = self.model.predict(
                    MultimodalBaseDataset(data=data),
                    cond_mod=cond_mod,
                    gen_mod=gen_mod,
                    return_mean=self.config.use_posterior_mean,
                )
        finally:
            self.model.train(was_training)
        return {
            name: from_model_form(self.card.modality(name), output[self.keys[name]])
            for name in missing
        }


class MoPoERecovery(MultivaeRecovery):
    """multivae's mixture-of-products-of-experts VAE with one shared latent."""

    name = "mopoe"
    model_class = MoPoE
    defaults = {"latent_dim": 64, "style_dim": 0, "hidden_dim": 256}
    unused_fields = ("importance_samples", "num_clusters")

    def _build_model(self) -> BaseMultiVAE:
        if self.config.style_dim:
            raise ValueError(
                "style_dim applies to mmvae_plus and cmvae only, because MoPoE here uses one "
                f"shared latent; got style_dim={self.config.style_dim}"
            )
        encoders, decoders = self._networks()
        config = MoPoEConfig(**self._multivae_config(), beta=self.config.beta)
        return MoPoE(config, encoders=encoders, decoders=decoders)


class MMVAEPlusRecovery(MultivaeRecovery):
    """multivae's MMVAE+, with shared and modality-specific latents."""

    name = "mmvae_plus"
    model_class = MMVAEPlus
    defaults = {"latent_dim": 32, "style_dim": 32, "hidden_dim": 256}
    unused_fields = ("num_clusters",)

    def _build_model(self) -> BaseMultiVAE:
        config = MMVAEPlusConfig(**_style_model_settings(self))
        encoders, decoders = self._networks()
        return MMVAEPlus(config, encoders=encoders, decoders=decoders)


class CMVAERecovery(MultivaeRecovery):
    """multivae's CMVAE, an MMVAE+ whose shared latent has a cluster prior."""

    name = "cmvae"
    model_class = CMVAE
    defaults = {"latent_dim": 32, "style_dim": 32, "hidden_dim": 256}

    def _build_model(self) -> BaseMultiVAE:
        config = CMVAEConfig(
            **_style_model_settings(self), number_of_clusters=self.config.num_clusters
        )
        encoders, decoders = self._networks()
        # NOTE: multivae's post-training cluster pruning (`prune_clusters`) is not run. It only
        # changes the cluster prior, which conditional generation (`encode`) does not read.
        return CMVAE(config, encoders=encoders, decoders=decoders)


def _style_model_settings(recovery: MultivaeRecovery) -> dict[str, Any]:
    """Return the multivae config keys that MMVAE+ and CMVAE share.

    Raises:
        ValueError: `style_dim` is below 1 (both models need a modality-specific latent).
    """
    if recovery.config.style_dim < 1:
        raise ValueError(
            f"{recovery.name} needs a modality-specific latent: set style_dim >= 1, "
            f"got {recovery.config.style_dim}"
        )
    return {
        **recovery._multivae_config(),
        "K": recovery.config.importance_samples,
        "prior_and_posterior_dist": "laplace_with_softmax",
        "learn_modality_prior": True,
        "beta": recovery.config.beta,
        "modalities_specific_dim": recovery.config.style_dim,
        "loss": "iwae_looser",
    }


MULTIVAE_RECOVERIES: dict[str, type[MultivaeRecovery]] = {
    cls.name: cls for cls in (MoPoERecovery, MMVAEPlusRecovery, CMVAERecovery)
}
