"""The generators of a training epoch (batch order, training draws) and the global RNG are distinct streams on CPU."""

import torch

from prvr.train.loop import epoch_seeds


def _words(seed: int, n: int = 64) -> torch.Tensor:
    return torch.randint(0, 2**31, (n,), generator=torch.Generator().manual_seed(seed))


def test_draws_stream_is_not_the_shuffle_stream_on_cpu():
    """mt19937 keeps the low 32 bits of a seed: an offset of 2^40 made the draws (perturbation, triplet negatives)
    replay the batch order's stream, and epoch 0 of seed 0 the stream that drew the initial weights."""
    for seed in (0, 1, 2, 7):
        for epoch in (0, 1, 14):
            shuffle, draws = epoch_seeds(seed, epoch)
            assert not torch.equal(_words(shuffle), _words(draws)), (seed, epoch)
            assert not torch.equal(_words(seed), _words(draws)), (seed, epoch)  # the global RNG (seed_everything)


def test_draws_seeds_never_meet_shuffle_or_global_seeds_modulo_2_32():
    seeds, epochs = range(20), range(200)
    mask = (1 << 32) - 1
    shuffle = {epoch_seeds(s, e)[0] & mask for s in seeds for e in epochs} | set(seeds)
    draws = {epoch_seeds(s, e)[1] & mask for s in seeds for e in epochs}
    assert len(draws) == len(seeds) * len(epochs)
    assert not shuffle & draws
