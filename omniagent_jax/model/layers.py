"""Small building blocks shared by the decoder and the towers: linear layers with logical axis
names, RMSNorm with the reference's casts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool,
    dtype: Dtype,
    rngs: nnx.Rngs,
    init_std: float = 0.02,
) -> nnx.Linear:
    """`nnx.Linear` whose kernel `[in, out]` and bias `[out]` carry logical axis names for sharding."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=nnx.initializers.normal(init_std),
        kernel_metadata={"out_sharding": axes},
        bias_metadata={"out_sharding": (axes[1],)},
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """`w * (x · rsqrt(mean(x²) + eps)).astype(x.dtype)`: fp32 statistics, cast back before the weight (docs/model.md §2.3)."""

    def __init__(self, dim: int, *, eps: float, dtype: Dtype, axis_name: str = "norm"):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), dtype=dtype), out_sharding=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * normed.astype(x.dtype)


class SwiGLU(nnx.Module):
    """`down(silu(gate(x)) * up(x))`: the decoder's MLP (no biases) and the vision blocks' (with biases)."""

    def __init__(self, dim: int, hidden: int, *, use_bias: bool, dtype: Dtype, rngs: nnx.Rngs):
        self.gate_proj = linear(dim, hidden, ("embed", "mlp"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.up_proj = linear(dim, hidden, ("embed", "mlp"), use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.down_proj = linear(hidden, dim, ("mlp", "embed"), use_bias=use_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
