"""Configs of the official score_sde `configs/vp/`, plus small CPU configs for the digits."""
