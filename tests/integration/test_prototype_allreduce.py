"""Prototypes are all-reduced: two Ray Train workers end up with the single-process result."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dymo_ray.train.backbone_loop import PrototypeAccumulator
from dymo_ray.train.common import shard_rows

NUM_ROWS, NUM_SUBSETS, NUM_CLASSES, DIM = 40, 3, 4, 5


def fixed_embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(NUM_SUBSETS, NUM_ROWS, DIM, generator=generator)
    labels = torch.arange(NUM_ROWS) % NUM_CLASSES
    return embeddings, labels


def accumulate_shard(config: dict) -> None:
    """Ray Train worker: add this rank's rows, reduce, save the prototypes per rank."""
    import ray.train

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    embeddings, labels = fixed_embeddings()
    rows = torch.as_tensor(shard_rows(NUM_ROWS, rank, world, seed=3))
    accumulator = PrototypeAccumulator(NUM_CLASSES, DIM)
    # Two batches per rank, as in an epoch of several steps.
    for part in rows.chunk(2):
        accumulator.add(embeddings[:, part], labels[part])
    prototypes = accumulator.reduce(epoch=1)
    torch.save(prototypes, Path(config["out"]) / f"rank{rank}.pt")
    ray.train.report({"done": 1})


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_workers_share_single_process_prototypes(ray_local, tmp_path):
    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # The workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainer = TorchTrainer(
        accumulate_shard,
        train_loop_config={"out": str(tmp_path)},
        torch_config=TorchConfig(backend="gloo", timeout_s=60),
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(name="prototype-allreduce", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()

    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    embeddings, labels = fixed_embeddings()
    single = PrototypeAccumulator(NUM_CLASSES, DIM)
    single.add(embeddings, labels)
    expected = single.reduce(epoch=1)

    assert torch.equal(rank0, rank1)
    torch.testing.assert_close(rank0, expected, atol=1e-6, rtol=0)


def test_class_means_hand_computed():
    accumulator = PrototypeAccumulator(num_classes=2, dim=2)
    embeddings = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])  # (A=1, B=3, D=2)
    accumulator.add(embeddings, torch.tensor([0, 1, 0]))
    prototypes = accumulator.reduce(epoch=1)
    torch.testing.assert_close(prototypes, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_missing_class_names_epoch():
    accumulator = PrototypeAccumulator(num_classes=3, dim=2)
    accumulator.add(torch.ones(1, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"classes \[2\] had no training sample in epoch 4"):
        accumulator.reduce(epoch=4)
