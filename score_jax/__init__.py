"""score_jax: score-based generative modelling through SDEs (Song et al., ICLR 2021) in JAX/Flax."""

__version__ = "0.1.0"
