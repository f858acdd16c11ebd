"""Trains the digits feature classifier and writes its weights (the shipped file is its output).

    bash run.sh -m score_jax.metrics.train_digits_classifier \
        --out score_jax/metrics/assets/digits_classifier.npz

Deterministic: fixed seeds for the initialisation, the batch order and the augmentation (random
shifts of up to one pixel, zero-filled); on one machine and JAX version it rewrites the same
bytes. About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax.metrics import digits_net

SEED = 0
EPOCHS = 40
BATCH = 50
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 1e-4


def shift_images(key: jax.Array, x: jax.Array) -> jax.Array:
    """Each image x [N, 8, 8, 1] moved by its own random (dy, dx) in {-1, 0, 1}^2, zero-filled."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    offsets = jax.random.randint(key, (x.shape[0], 2), 0, 3)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (8, 8, 1))
    return jax.vmap(crop)(padded, offsets)


def make_train_step(optimizer: optax.GradientTransformation):
    """One jitted Adam step on a batch (images uint8 [B, 8, 8, 1], labels [B]) with shifts."""
    model = digits_net.DigitsClassifier()

    def loss_fn(params, x, labels):
        logits = model.apply({"params": params}, x).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state, key, images, labels):
        x = shift_images(key, digits_net.to_input(images))
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def accuracy(params: dict, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images [N, 8, 8, 1] the classifier labels correctly."""
    logits = digits_net.digits_outputs(images, params).logits
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def train(seed: int = SEED, epochs: int = EPOCHS) -> dict:
    """Classifier parameters trained on the 'train' split (1500 images) for `epochs` epochs."""
    images, labels = digits_net.digits_split("train")
    key = jax.random.PRNGKey(seed)
    params = digits_net.DigitsClassifier().init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    steps_per_epoch = len(images) // BATCH
    schedule = optax.cosine_decay_schedule(LEARNING_RATE, epochs * steps_per_epoch)
    optimizer = optax.adamw(schedule, weight_decay=WEIGHT_DECAY)
    opt_state = optimizer.init(params)
    step = make_train_step(optimizer)
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        for i in range(steps_per_epoch):
            idx = order[i * BATCH:(i + 1) * BATCH]
            step_key = jax.random.fold_in(key, epoch * steps_per_epoch + i)
            params, opt_state, loss = step(params, opt_state, step_key, images[idx], labels[idx])
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {float(loss):.4f}", flush=True)
    return jax.tree_util.tree_map(np.asarray, params)


def main() -> None:
    """Parses --out, trains, reports train/test accuracy and writes the weights."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=digits_net.WEIGHTS_PATH, help="output .npz path")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    start = time.perf_counter()
    params = train(args.seed, args.epochs)
    for split in ("train", "test"):
        print(f"{split} accuracy: {accuracy(params, *digits_net.digits_split(split)):.4f}")
    digits_net.save_params(args.out, params)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
