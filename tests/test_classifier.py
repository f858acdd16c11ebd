"""Noise-conditional classifiers: the official WRN-28-10 parameter tree, the digits classifier's
training to >= 90% clean test accuracy, and the official checkpoint reader."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

from conftest import RUN_OPTIMISED
from score_jax import classifier_losses, train_state
from score_jax import sde as sde_lib
from score_jax.metrics import digits_net
from score_jax.models import classifier
from score_jax.official_checkpoint import flatten_tree


def official_wrn_tree(blocks=4, k=10, classes=10):
    """Paths and shapes of the official WideResnet(blocks_per_group, channel_multiplier) params,
    written out from the structure of score_sde's models/wideresnet_noise_conditional.py."""
    tree = {"GaussianFourierProjection_0/W": (128,),
            "Dense_0/kernel": (256, 512), "Dense_0/bias": (512,),
            "Dense_1/kernel": (512, 512), "Dense_1/bias": (512,),
            "init_conv/kernel": (3, 3, 3, 16),
            "pre-pool-bn/scale": (64 * k,), "pre-pool-bn/bias": (64 * k,),
            "Dense_2/kernel": (64 * k, classes), "Dense_2/bias": (classes,)}
    c_in = 16
    for g, width in enumerate((16 * k, 32 * k, 64 * k)):
        for i in range(blocks):
            p = f"WideResnetGroup_{g}/WideResnetBlock_{i}/"
            tree.update({p + "init_bn/scale": (c_in,), p + "init_bn/bias": (c_in,),
                         p + "conv1/kernel": (3, 3, c_in, width),
                         p + "Dense_0/kernel": (512, width), p + "Dense_0/bias": (width,),
                         p + "bn_2/scale": (width,), p + "bn_2/bias": (width,),
                         p + "conv2/kernel": (3, 3, width, width)})
            c_in = width
    return tree


def _wrn_shapes():
    model = classifier.WideResnetNoiseConditional()
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 32, 32, 3)),
                          jnp.ones((1,)))["params"]


def test_wrn_28_10_matches_official_tree():
    got = {k: tuple(v.shape) for k, v in flatten_tree(_wrn_shapes()).items()}
    assert got == official_wrn_tree()


def test_load_official_classifier_checks_tree(tmp_path):
    shapes = _wrn_shapes()
    fake = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
    (tmp_path / "checkpoint_7").write_bytes(serialization.msgpack_serialize(fake))
    params = classifier.load_official_classifier(tmp_path, shapes)
    assert set(flatten_tree(params)) == set(official_wrn_tree())
    fake["Dense_2"]["kernel"] = np.zeros((640, 100), np.float32)
    (tmp_path / "checkpoint_8").write_bytes(serialization.msgpack_serialize(fake))
    with pytest.raises(ValueError, match="Dense_2/kernel"):
        classifier.load_official_classifier(tmp_path, shapes)


def test_wrn_forward_small():
    model = classifier.WideResnetNoiseConditional(blocks_per_group=1, channel_multiplier=1)
    x = jnp.ones((2, 8, 8, 3))
    params = model.init(jax.random.PRNGKey(0), x, jnp.ones((2,)))["params"]
    fn = classifier.classifier_logits_fn(sde_lib.VESDE(), model.apply, params,
                                         input_mean=classifier.CIFAR10_MEAN,
                                         input_std=classifier.CIFAR10_STD)
    logits = fn(x, jnp.array([0.1, 0.9]))
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


def test_digits_classifier_trains_to_90_percent_clean():
    x_train, y_train = digits_net.digits_split("train")
    x_test, y_test = digits_net.digits_split("test")
    x_train = jnp.asarray(x_train / 255.0, jnp.float32)
    x_test = jnp.asarray(x_test / 255.0, jnp.float32)
    sde = sde_lib.VPSDE()
    model = classifier.DigitsNoiseConditional()
    params = model.init(jax.random.PRNGKey(0), x_train[:1], jnp.ones((1,)))["params"]
    opt = optax.adam(2e-3)
    step = jax.jit(classifier_losses.make_classifier_train_step(sde, model.apply, opt, eps=1e-3,
                                                                ema_rate=0.99),
                   compiler_options=RUN_OPTIMISED)
    loss_fn = jax.jit(classifier_losses.get_classifier_loss_fn(sde, model.apply, eps=1e-3))
    state = train_state.init_train_state(jax.random.PRNGKey(1), params, opt)
    batch = (x_train[:512], jnp.asarray(y_train[:512]))
    before = float(loss_fn(jax.random.PRNGKey(5), params, {}, batch)[0])
    rng = np.random.default_rng(0)
    for _ in range(600):
        idx = rng.integers(0, x_train.shape[0], 128)
        state, _ = step(state, (x_train[idx], jnp.asarray(y_train[idx])))
    after = float(loss_fn(jax.random.PRNGKey(5), state.params_ema, {}, batch)[0])
    assert after < before - 0.2
    acc = classifier_losses.accuracy(sde, model.apply, state.params_ema, x_test,
                                     jnp.asarray(y_test), 1e-3)
    assert acc >= 0.9
