"""Sample-quality metrics: the FID Inception network, FID/KID/IS, and the digits feature net.

- `inception`: the 2015-12-05 FID Inception graph in Flax (pool_3 [N, 2048], logits [N, 1008]).
- `inception_weights`: `load_inception_params(path)` for pytorch-fid's .pth, the JAX ports'
  pickle or an .npz state dict, read without torch; nothing is downloaded.
- `fid`: Fréchet distance, KID, Inception Score, streaming feature moments, reference stats in
  the official `assets/stats/<name>_stats.npz` layout.
- `digits_net`: the embedded digits' classifier, giving FD-digits, IS-digits and class histograms.

Submodules are imported explicitly (no import-time work here): `from score_jax.metrics import fid`.
"""
