"""`--mode train_classifier`: a noise-conditional classifier for class-conditional sampling.

Cross-entropy on data perturbed by the config's SDE at t ~ U(classifier.eps, T)
(score_jax.classifier_losses), Adam at classifier.lr, EMA classifier.ema_rate, over the training
split in batches of classifier.batch_size, compiled once over the device mesh like the score
model's train step. The final state (step, parameters, EMA, optimiser) goes to
`<workdir>/classifier/checkpoints/` (orbax, experiment.classifier_dir), where
`--mode sample --config.sample.task=conditional` finds it; the clean accuracy of the EMA
parameters on the evaluation split is reported.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import checkpoints, classifier_losses, coordination, datasets, experiment, parallel
from score_jax import reporting, workdir as workdir_lib
from score_jax import workdir_lock
from score_jax.models import classifier as classifier_lib

def train_classifier(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                     coordinator: coordination.Coordinator | None = None) -> float:
    """Train the classifier of config in workdir; returns its clean evaluation accuracy."""
    c = config.classifier
    coord = coordinator or coordination.Coordinator()
    exp = experiment.build(config)
    model, optimizer = experiment.get_classifier(config), experiment.classifier_optimizer(config)
    mesh = parallel.make_mesh()
    parallel.local_batch_size(int(c.batch_size), mesh, "classifier.batch_size")
    data = experiment.train_iterator(config, batch_size=int(c.batch_size))
    path = workdir_lib.prepare(workdir)
    with workdir_lock.claim(path, "classifier", mode="train_classifier"):
        reporter = reporting.Reporter(path / "classifier" / "tensorboard",
                                      enabled=parallel.is_main_process())
        step_fn = classifier_losses.make_classifier_train_step(exp.sde, model.apply, optimizer,
                                                                eps=float(c.eps),
                                                                ema_rate=float(c.ema_rate))
        rep, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        step = jax.jit(step_fn, in_shardings=(rep, (batch_sharding, batch_sharding)),
                       out_shardings=(rep, rep), donate_argnums=0)
        state = parallel.replicate(experiment.classifier_init_state(config, model, optimizer), mesh)
        scaler = datasets.get_data_scaler(config.data.centered)
        try:
            with reporter.progress(int(c.n_iters), desc="classifier", unit="step") as bar:
                for i in range(int(c.n_iters)):
                    batch = next(data)
                    xy = parallel.global_batch((scaler(batch["image"]),
                                                batch["label"].astype(np.int32)), mesh)
                    state, metrics = step(state, xy)
                    postfix = None
                    if (i + 1) % 50 == 0:  # reading the loss syncs with the device: not every step
                        postfix = {"loss": float(parallel.to_host(metrics["loss"]))}
                        reporter.scalars(i + 1, {"classifier_loss": postfix["loss"]})
                    bar.update(1, postfix)
        finally:
            data.close()
        manager = checkpoints.open_manager(experiment.classifier_dir(path), snapshot_every=1, async_save=False)
        checkpoints.save(manager, int(c.n_iters), state)
        manager.wait_until_finished()
        manager.close()
        accuracy = _eval_accuracy(config, exp, model, parallel.to_host(state.params_ema), coord)
        reporter.message(f"classifier: {c.n_iters} steps, clean accuracy {accuracy:.4f} on the "
                         f"evaluation split -> {experiment.classifier_dir(path)}")
        reporter.close()
        return accuracy


def _eval_accuracy(config, exp, model, params, coord) -> float:
    """Clean (t = classifier.eps) accuracy over every evaluation example, all processes."""
    scaler = datasets.get_data_scaler(config.data.centered)
    right, total = 0, 0
    for batch in experiment.eval_iterator(config, seed=0, dequantize=False):
        x, mask = scaler(batch["image"]), batch["mask"]
        t = jnp.full(x.shape[:1], float(config.classifier.eps))
        logits = classifier_lib.classifier_logits_fn(exp.sde, model.apply, params)(x, t)
        hits = np.asarray(jnp.argmax(logits, -1)) == batch["label"]
        right += int(np.sum(hits & mask))
        total += int(mask.sum())
    counts = np.sum(np.stack(coord.gather("classifier_accuracy", np.asarray([right, total]))), 0)
    return float(counts[0] / counts[1])
