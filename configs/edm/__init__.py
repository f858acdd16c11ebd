"""EDM's formulation (Karras et al. 2022) on the DDPM++ networks: digits (CPU) and CIFAR-10 (config F)."""
