"""The MTIR reward and its parts: prototype confidence Q, ICS and the calibration factor G.

Every function is vectorised over rows and computes in float64, whatever the dtype of the
embeddings, so that batched selection and a per-sample reference agree to rounding.

Notation (one row per sample, or per (sample, candidate) pair during selection):
    h: embedding of a subset, D values.
    P^S_c, sigma^S_c: prototype and distance scale of class c under subset S.
    Pbar_c: overall prototype of class c, the mean of P^S_c over subsets.
"""

from __future__ import annotations

import math

import torch

METRICS = ("cosine", "euclidean")
CALIBRATION_FORMS = ("ratio", "log-ratio")


def check_metric(metric: str) -> None:
    """Raise ValueError unless `metric` is one of METRICS."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {list(METRICS)}")


def prototype_scores(h: torch.Tensor, prototypes: torch.Tensor, metric: str) -> torch.Tensor:
    """Score every row against every prototype.

    Args:
        h: Embeddings (B, D).
        prototypes: Prototypes (C, D).
        metric: "cosine" gives the dot product <h, P_c> (prototypes are means of unit vectors
            and are not renormalised), "euclidean" gives minus the squared distance.

    Returns:
        Float64 scores (B, C).
    """
    check_metric(metric)
    h = h.double()
    prototypes = prototypes.to(device=h.device, dtype=torch.float64)
    dot = h @ prototypes.T
    if metric == "cosine":
        return dot
    # -||h - P||^2 expanded. In float64 the cancellation error is about 1e-16 * ||h||^2,
    # far below anything the reward resolves, and no (B, C, D) difference tensor is built.
    h_sq = (h * h).sum(dim=1, keepdim=True)
    p_sq = (prototypes * prototypes).sum(dim=1)
    return 2.0 * dot - h_sq - p_sq


def prototype_confidence(
    h: torch.Tensor, overall_prototypes: torch.Tensor, metric: str, tau: float
) -> torch.Tensor:
    """Compute Q(h) = max_c softmax_c(s(h, Pbar_c) / tau), the prototype confidence.

    Args:
        h: Embeddings (B, D).
        overall_prototypes: Overall prototypes Pbar (C, D).
        metric: "cosine" (s = dot product) or "euclidean" (s = minus squared distance).
        tau: Selection temperature, > 0.

    Returns:
        Float64 Q (B,), in [1/C, 1].
    """
    scores = prototype_scores(h, overall_prototypes, metric) / tau
    return torch.softmax(scores, dim=1).max(dim=1).values


def prototype_distance(
    h: torch.Tensor, prototypes_for_rows: torch.Tensor, metric: str
) -> torch.Tensor:
    """Compute the distance d(h, P) of each row to its own prototype.

    Args:
        h: Embeddings (B, D).
        prototypes_for_rows: One prototype per row (B, D).
        metric: "cosine" gives 1 - <h, P>, "euclidean" gives the plain (not squared) L2 norm.

    Returns:
        Float64 distances (B,), >= 0.
    """
    check_metric(metric)
    h = h.double()
    prototypes_for_rows = prototypes_for_rows.to(device=h.device, dtype=torch.float64)
    if metric == "euclidean":
        return torch.linalg.vector_norm(h - prototypes_for_rows, dim=1)
    # With a unit h and a prototype of norm <= 1 the cosine distance is >= 0 in exact
    # arithmetic. Rounding can leave it near -1e-7, which would push ICS above 1, so clamp.
    return (1.0 - (h * prototypes_for_rows).sum(dim=1)).clamp_min(0.0)


def ics(
    h: torch.Tensor,
    prototypes_for_rows: torch.Tensor,
    sigma_for_rows: torch.Tensor,
    metric: str,
) -> torch.Tensor:
    """Compute the intra-class similarity ICS = 2 (1 - Phi(d / sigma)) = erfc(d / (sigma sqrt 2)).

    ICS is the two-sided Gaussian tail probability of the distance: 1 at the prototype,
    falling towards 0 as the embedding becomes atypical of the class.

    Args:
        h: Embeddings (B, D).
        prototypes_for_rows: Prototype P^S_c of each row's subset and class (B, D).
        sigma_for_rows: Distance scale sigma^S_c of each row's subset and class (B,), > 0.
        metric: "cosine" or "euclidean", as in `prototype_distance`.

    Returns:
        Float64 ICS (B,), in [0, 1].
    """
    distance = prototype_distance(h, prototypes_for_rows, metric)
    sigma = sigma_for_rows.to(device=distance.device, dtype=torch.float64)
    # erfc keeps the far tail that the naive 2 * (1 - Phi(x)) loses. In float32, Phi(x)
    # rounds to exactly 1 for x above about 5.4, so the naive form returns 0 there and
    # log(ICS) is -inf. erfc in float64 gives, for example, 1.2e-15 at x = 8 and only
    # underflows to 0 above x of about 38.5.
    return torch.special.erfc(distance / (sigma * math.sqrt(2.0)))


def calibration_factor(g: torch.Tensor, g_new: torch.Tensor, form: str) -> torch.Tensor:
    """Compute the calibration factor G, which only ever penalises a drop in ICS.

    G = 1 where g_new >= g. Where g_new < g:
        "ratio":     G = g_new / g
        "log-ratio": G = log g / log g_new
    Both forms give 0 <= G < 1 on a drop. The edge cases, with ICS in [0, 1] and no epsilon:
        g = g_new (0 or 1 included): no drop, G = 1.
        g_new = 0 < g: G = 0 in both forms (log-ratio: log g / -inf, written out explicitly).
        g = 1 > g_new, log-ratio: log g = 0, so G = 0. This is the limit of log g / log g_new
            as g tends to 1, and a fully typical base then rejects any candidate that is less
            typical.
    The ratio form never divides by 0 because a drop implies g > g_new >= 0.

    Args:
        g: ICS of the current subset (B,).
        g_new: ICS with the candidate added (B,).
        form: "ratio" or "log-ratio".

    Returns:
        Float64 G (B,), in [0, 1].
    """
    if form not in CALIBRATION_FORMS:
        raise ValueError(
            f"unknown calibration form {form!r}; valid forms: {list(CALIBRATION_FORMS)}"
        )
    g = g.double()
    g_new = g_new.to(device=g.device, dtype=torch.float64)
    drop = g_new < g
    positive_drop = drop & (g_new > 0)
    # Placeholders keep log and division finite on rows where the value is not used.
    safe_g = torch.where(positive_drop, g, torch.full_like(g, 0.5))
    safe_g_new = torch.where(positive_drop, g_new, torch.full_like(g_new, 0.25))
    if form == "ratio":
        penalty = safe_g_new / safe_g
    else:
        # Adding 0.0 turns the -0.0 of log(1) / log(g_new) into +0.0.
        penalty = torch.log(safe_g) / torch.log(safe_g_new) + 0.0
    penalty = torch.where(positive_drop, penalty, torch.zeros_like(penalty))
    return torch.where(drop, penalty, torch.ones_like(penalty))


def mtir_reward(
    q_new: torch.Tensor, factor: torch.Tensor, q_base: torch.Tensor
) -> torch.Tensor:
    """Compute the MTIR reward R(u | S) = Q(h_S+u) * G - Q(h_S).

    R > 0: u is useful, R = 0: no gain, R < 0: u is harmful.

    The DyMo poster writes the reward in log-probability (loss-reduction) form. With a
    multiplicative calibration, log(Q' G) - log Q has the same sign as Q' G - Q. It also has
    the same argmax over candidates, because Q is shared. So selection decisions are
    identical, and only the logged magnitudes differ. The poster's alpha term, applied to a
    log-probability, would raise the reward of a less typical candidate. We follow the
    authors' released code instead, where a drop in typicality (G < 1) lowers the reward.

    Args:
        q_new: Q with the candidate added (B,).
        factor: Calibration factor G (B,).
        q_base: Q of the current subset (B,).

    Returns:
        Float64 rewards (B,).
    """
    return q_new.double() * factor.double() - q_base.double()
