"""The label value of a position that carries no loss.

Its own JAX-free module: data-loader workers (`sft_data`) write it, the loss (`loss`) skips it.
"""

IGNORE = -1  # prompt, padding and last positions; never a token id
