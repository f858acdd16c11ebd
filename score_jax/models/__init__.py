"""Score networks of the paper (NCSN++, DDPM++, DDPM, NCSNv2) and the score-function wrapper."""
