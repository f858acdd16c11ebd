"""Configs of the official score_sde `configs/ve/ncsnv2/`."""
