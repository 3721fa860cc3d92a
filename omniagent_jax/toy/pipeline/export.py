"""A training run's orbax checkpoint (SFT or RL, ``output_dir/checkpoints``) as a JAX checkpoint that
``--model`` and RL ``init`` load: the trained decoder with the frozen towers."""

from __future__ import annotations

import pathlib

from omniagent_jax.toy.pipeline.config import PipelineError


def export_checkpoint(scfg, run_dir: str | pathlib.Path, out: str | pathlib.Path, *, step: int | None = None,
                      with_ref: bool = False) -> pathlib.Path:
    """Step ``step`` (default: the latest) of the run in ``run_dir`` trained with the model setup ``scfg`` (an
    ``SFTConfig``; an RL run's ``model_setup()``) written to ``out``. ``with_ref``: the run also kept its KL
    reference. PipelineError when that step was not saved."""
    from flax import nnx

    from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint
    from omniagent_jax.train import mesh as mesh_lib
    from omniagent_jax.train import optim, setup
    from omniagent_jax.train import step as step_lib
    from omniagent_jax.train.checkpoint import Checkpointer
    from omniagent_jax.train.config import CheckpointConfig

    mesh = mesh_lib.make_mesh(scfg.mesh)
    graphdef, trainable, frozen, other = setup.abstract_model(scfg, mesh)
    tx = optim.make_optimizer(scfg.optim, 1)  # the optimizer state's structure only; the schedule is not read
    target = {"train": step_lib.abstract_state(trainable, tx), "frozen": frozen, "other": other}
    if with_ref:
        target["ref"] = trainable
    ckpt = Checkpointer(pathlib.Path(run_dir) / "checkpoints", CheckpointConfig(async_save=False))
    try:
        saved = ckpt.manager.all_steps()
        want = ckpt.latest_step() if step is None else step
        if want is None or want not in saved:
            raise PipelineError(f"run {run_dir} has no checkpoint of step {want} (saved: {sorted(saved)})")
        restored, _ = ckpt.restore(target, want)
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, restored["train"].params, restored["frozen"], restored["other"])
    return save_jax_checkpoint(model, out, overwrite=True)
