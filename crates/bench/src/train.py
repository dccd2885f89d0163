"""The training-loop row of `lego bench excache`: the paper's kind of
workload (a model trained by minibatch SGD over a dataset held in memory),
with numpy.

usage: train.py SAMPLES FEATURES HIDDEN EPOCHS

Generates a dataset of SAMPLES x FEATURES float32 (seeded), labels from a
hidden linear rule, then trains a two-layer perceptron (ReLU, sigmoid,
cross-entropy) for EPOCHS epochs over minibatches in a seeded random order.
Prints one loss line per epoch and a hash of the weights (deterministic with
one BLAS thread), then `elapsed SECONDS` and `peak_rss_kb KB`, which vary.
"""

import hashlib
import sys
import time

import numpy as np


def main():
    n, d, h, epochs = (int(a) for a in sys.argv[1:5])
    t0 = time.monotonic()
    rng = np.random.default_rng(42)
    x = rng.standard_normal((n, d), dtype=np.float32)
    rule = rng.standard_normal(d, dtype=np.float32)
    y = (x @ rule > 0).astype(np.float32)
    w1 = rng.standard_normal((d, h), dtype=np.float32) * np.float32(0.05)
    w2 = rng.standard_normal(h, dtype=np.float32) * np.float32(0.05)
    batch, lr = 256, np.float32(0.05)
    for epoch in range(epochs):
        loss = 0.0
        for b in rng.permutation(n // batch):
            xb = x[b * batch:(b + 1) * batch]
            yb = y[b * batch:(b + 1) * batch]
            z = xb @ w1
            a = np.maximum(z, 0)
            p = 1 / (1 + np.exp(-(a @ w2)))
            loss += float(-np.mean(yb * np.log(p + 1e-7) + (1 - yb) * np.log(1 - p + 1e-7)))
            g = (p - yb) / batch
            gw2 = a.T @ g
            ga = np.outer(g, w2) * (z > 0)
            gw1 = xb.T @ ga
            w1 -= lr * gw1
            w2 -= lr * gw2
        print(f"epoch {epoch} loss {loss / (n // batch):.6f}")
    digest = hashlib.sha256(w1.tobytes() + w2.tobytes()).hexdigest()[:16]
    print(f"weights {digest}")
    print(f"elapsed {time.monotonic() - t0:.6f}")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                print(f"peak_rss_kb {line.split()[1]}")


if __name__ == "__main__":
    main()
