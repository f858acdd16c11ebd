"""Configs of the official score_sde `configs/vp/ddpm/`."""
