"""Drawing minibatches: from a training set in memory (the baseline: ``train[randint]``) and
streamed from a memory-mapped .npy file (``data.stream.Batches``) with 0 and 2 reading workers.
(N = 100 000 images of 28×28 uint8 in the file, batches of 256, float32 out; one group.)

The streamed reader also maps uint8 to [−1, 1] per batch (the in-memory set did it once at load),
so the pair measures what streaming costs per batch. With workers, a ``next()`` mostly waits for
batches already prefetched: the time is the workers' throughput when the consumer is faster.
"""

import numpy as np
import pytest
import torch

from gpflow_kernels.data import load
from gpflow_kernels.data.stream import Batches

N, BATCH = 100_000, 256


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("stream") / "images.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, size=(N, 28, 28), dtype=np.uint8))
    return p


@pytest.mark.parametrize("impl", ["memory", "stream-w0", "stream-w2"])
def test_draw_batch(benchmark, image_file, impl):
    benchmark.group = f"draw a batch of {BATCH} 28x28 images from {N} threads={torch.get_num_threads()}"
    if impl == "memory":
        train = load(str(image_file), stream="off").train
        g = torch.Generator().manual_seed(0)
        fn = lambda: train[torch.randint(0, len(train), (BATCH,), generator=g)]
    else:
        st = load(str(image_file), stream="on").stream
        b = Batches(st, st.indices, BATCH, seed=0, device="cpu", workers=int(impl[-1]))
        fn = b.next
    assert fn().shape == (BATCH, 784)
    benchmark.pedantic(fn, rounds=200, warmup_rounds=20, iterations=1)
    if impl != "memory":
        b.close()
