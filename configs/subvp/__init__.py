"""Configs of the official score_sde `configs/subvp/`, plus small CPU configs for the digits."""
