"""Score-network table and the config boundary: a ConfigDict becomes a typed flax module here.

`get_model(config)` fills each dataclass field of the chosen module class from `config.model`, from
`config.data` (image_size, num_channels, centered) and from the SDE fields the official models read
(sigma_min, sigma_max, num_scales; they live in `config.model` in the official configs). A field
that no config of that architecture sets (e.g. `fourier_scale` with positional embeddings, where it
is unused) keeps the class default. `init_model` reproduces the official `models/utils.init_model`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.models.ddpm import DDPM
from score_jax.models.ncsnpp import NCSNpp
from score_jax.models.ncsnv2 import NCSN, NCSNv2, NCSNv2_128, NCSNv2_256
from score_jax.errors import InvalidInputError

MODELS: dict[str, type[nn.Module]] = {
    "ncsnpp": NCSNpp,
    "ddpm": DDPM,
    "ncsn": NCSN,
    "ncsnv2_64": NCSNv2,
    "ncsnv2_128": NCSNv2_128,
    "ncsnv2_256": NCSNv2_256,
}

# Fields read from config.data rather than config.model; all other fields come from config.model
# (the official configs keep sigma_min/sigma_max/num_scales/beta_* there too).
_DATA_FIELDS = ("image_size", "num_channels", "centered")
# Module fields that are not configuration (flax internals) or that the caller sets explicitly.
_SKIP_FIELDS = ("parent", "name")


def _as_field_value(name: str, value: Any) -> Any:
    """Config value -> module field value: lists (e.g. from JSON) become tuples, dtype names dtypes."""
    if name == "dtype" and isinstance(value, str):
        try:
            return jnp.dtype(value)
        except TypeError as err:
            raise InvalidInputError(f"config.model.dtype: unknown dtype {value!r}; expected e.g. "
                                    f"'float32' or 'bfloat16'.") from err
    return tuple(value) if isinstance(value, list) else value


def model_kwargs(model_cls: type[nn.Module], config: Any) -> dict[str, Any]:
    """Keyword arguments for model_cls taken from config.model / config.data, for the fields present."""
    model_cfg, data_cfg = config.model, config.data
    kwargs = {}
    for field in dataclasses.fields(model_cls):
        if field.name in _SKIP_FIELDS or not field.init:
            continue
        source = data_cfg if field.name in _DATA_FIELDS else model_cfg
        if field.name in source:
            kwargs[field.name] = _as_field_value(field.name, source[field.name])
    return kwargs


def get_model(config: Any, **overrides: Any) -> nn.Module:
    """The score network named by config.model.name, its fields filled from config; overrides win.

    Raises:
      ValueError: config.model.name is not in MODELS.
    """
    name = config.model.name
    if name not in MODELS:
        raise InvalidInputError(f"config.model.name: unknown model {name!r}; expected one of {sorted(MODELS)}.")
    model_cls = MODELS[name]
    return model_cls(**{**model_kwargs(model_cls, config), **overrides})


def init_model(key: jax.Array, model: nn.Module, image_size: int, num_channels: int) -> dict[str, Any]:
    """Initial variables of `model` as the official init_model makes them: {'params': ..., ...}.

    The key is split into params and dropout keys and the model is initialised in training mode on
    zeros [1, image_size, image_size, num_channels] with int32 zero labels, as officially (on one
    device), so that the parameters agree bit for bit with the official initialisation.
    """
    params_key, dropout_key = jax.random.split(key)
    fake_input = jnp.zeros((1, image_size, image_size, num_channels), jnp.float32)
    fake_label = jnp.zeros((1,), dtype=jnp.int32)
    variables = model.init({"params": params_key, "dropout": dropout_key}, fake_input, fake_label, train=True)
    return dict(variables)
