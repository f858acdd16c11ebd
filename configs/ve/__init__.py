"""Configs of the official score_sde `configs/ve/`, plus small CPU configs for the digits."""
