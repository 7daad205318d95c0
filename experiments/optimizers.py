"""Optimizers of the grokking experiments, built by name.

Plain optimizers: ``sgd``, ``adamw``, ``muon`` (``optax.contrib.muon``),
``egdm`` (``optax_egd.egdm``: EGD of a Nesterov momentum buffer with Muon's
shape scaling and ``weight_decay`` on every 2-D leaf, AdamW at the same lr on
the rest; the default of ``--preset grokfast``).
EGD on a smoothed direction, as Muon orthogonalizes momentum (every kernel
gets ``lr`` times a unit-singular-value update):

* ``adam-egd``: Adam's moments first, then EGD, on the kernels:
  ``chain(scale_by_adam(b1, b2), egd(), add_decayed_weights(adam_weight_decay),
  scale_by_learning_rate(lr))``; biases, norms and embeddings take AdamW with
  ``adam_lr``. The other order, ``egd-adamw``, divides EGD's update by
  Adam's per-coordinate ``sqrt(v)``, which undoes the equal singular values
  (``experiments/README.md`` has the measurement);
* ``momentum-egd``: on the kernels, EGD of an SGD momentum buffer
  (``optax.trace(momentum)``, 0.9 when unset; 0 is no momentum) rather than
  of the gradient; plain SGD (``lr``) elsewhere. ``momentum-egd-first-layer``:
  the same on the first kernel only (the sparse-parity recipe).

Preconditioners, chained in front of SGD, or of AdamW with an ``-adamw``
suffix (``egd-adamw``, ``grokfast-ema-adamw``, ...):

* ``egd``: ``optax_egd.egd()`` on every kernel (weight matrix);
* ``egd-first-layer``: EGD on the model's first kernel only, the official
  scripts' mode, via ``optax.masked``;
* ``egd-rsvd``, ``egd-ns``, ``egd-polar-express``: EGD with the randomized
  SVD (``rank``), Newton–Schulz, or Polar Express polar factor;
  ``egd-rsvd-first-layer``: the randomized SVD on the first kernel only;
* ``column-norm``, ``grokfast-ema``, ``grokfast-ma``, ``orthograd``: the
  baselines of ``optax_egd``.

Defaults are the papers' own: SGD lr 0.7 (EGD, modular arithmetic), AdamW
lr 1e-3 with β = (0.9, 0.98) (Grokfast's transformer), Muon lr 0.02, rSVD
rank 128 (EGD's ``egd_rsvd_update_128``), Grokfast-EMA α 0.98 λ 2,
Grokfast-MA window 100 λ 5. ``warmup_steps`` (Grokfast's transformer: 10)
ramps every learning rate up linearly from 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from experiments import registry
from experiments.models import (
  Path,
  is_kernel,
  kernel_mask,
  matrix_dimension_numbers,
  path_keys,
)
from experiments.registry import (  # noqa: F401 (re-exported)
  BASES,
  COMPOSED,
  DEFAULT_MOMENTUM,
  EGDM_MOMENTUM,
  GROKFAST_DEFAULT,
  KNOBS,
  NAMES,
  PRECONDITIONERS,
  OptimizerConfig,
  default,
)
import optax_egd


def momentum(name: str, config: OptimizerConfig) -> float:
  """``config.momentum``, or optimizer ``name``'s own default if it is None
  (an explicit 0 stays 0).

  >>> momentum("egdm", OptimizerConfig()), momentum("egdm", OptimizerConfig(momentum=0))
  (0.95, 0)
  """
  if config.momentum is not None:
    return config.momentum
  return default(name, "momentum")  # type: ignore[return-value]


def _path_mask(target: Path) -> Callable[[Any], Any]:
  """Mask function selecting the single parameter at ``target``."""

  def mask(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
      lambda path, _: path_keys(path) == target, params
    )

  return mask


def _matrix_kernel_mask(params: Any) -> Any:
  """True on 2-D kernels (column normalization needs plain matrices)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, leaf: is_kernel(path) and leaf.ndim == 2, params
  )


def _egd(config: OptimizerConfig, **kwargs: Any) -> optax.GradientTransformation:
  kwargs.setdefault("method", config.polar_method)
  return optax_egd.egd(
    dimension_numbers=matrix_dimension_numbers, key=config.seed, **kwargs
  )


def preconditioner(
  name: str, config: OptimizerConfig, first_kernel: Path
) -> optax.GradientTransformation:
  """The gradient transformation named ``name`` (see :data:`PRECONDITIONERS`)."""
  if name == "egd":
    return optax.masked(_egd(config), kernel_mask)
  if name == "egd-first-layer":
    return optax.masked(_egd(config), _path_mask(first_kernel))
  if name == "egd-rsvd":
    return optax.masked(_egd(config, method="rsvd", rank=config.rank), kernel_mask)
  if name == "egd-rsvd-first-layer":
    return optax.masked(
      _egd(config, method="rsvd", rank=config.rank), _path_mask(first_kernel)
    )
  if name == "egd-ns":
    return optax.masked(
      _egd(config, method="newton_schulz", ns_steps=config.ns_steps), kernel_mask
    )
  if name == "egd-polar-express":
    return optax.masked(
      _egd(config, method="polar_express", ns_steps=config.ns_steps), kernel_mask
    )
  if name == "column-norm":
    return optax.masked(optax_egd.column_norm(), _matrix_kernel_mask)
  if name == "grokfast-ema":
    return optax_egd.grokfast_ema(config.ema_alpha, config.ema_lamb)
  if name == "grokfast-ma":
    return optax_egd.grokfast_ma(config.ma_window, config.ma_lamb)
  if name == "orthograd":
    return optax_egd.orthograd()
  raise ValueError(f"unknown preconditioner {name!r}; choose from {PRECONDITIONERS}")


def base(
  name: str, config: OptimizerConfig, first_kernel: Path | None = None
) -> optax.GradientTransformation:
  """``sgd`` or ``adamw`` with the configured hyperparameters."""
  if name == "sgd":
    beta = momentum("sgd", config)
    # Momentum 0 is plain SGD: optax.sgd without a trace (the same updates).
    return optax.sgd(config.schedule(config.lr), momentum=beta if beta > 0 else None)
  if name == "adamw":
    return optax.adamw(
      config.schedule(config.adam_lr),
      config.b1,
      config.b2,
      weight_decay=config.adam_weight_decay,
    )
  raise ValueError(f"unknown base optimizer {name!r}; choose from {BASES}")


def egd_on_smoothed(
  name: str, config: OptimizerConfig, first_kernel: Path
) -> optax.GradientTransformation:
  """``adam-egd``, ``momentum-egd`` or ``momentum-egd-first-layer``.

  As the module docstring says: the smoothing and EGD act on the selected
  kernels only; every other parameter takes plain SGD (``momentum-egd*``)
  or AdamW with ``adam_lr`` (``adam-egd``).
  """
  if name in ("momentum-egd", "momentum-egd-first-layer"):
    mask = _path_mask(first_kernel) if name.endswith("-first-layer") else kernel_mask
    trace = optax.trace(momentum(name, config))
    return optax.chain(
      optax.masked(optax.chain(trace, _egd(config)), mask),
      optax.sgd(config.schedule(config.lr)),
    )
  if name != "adam-egd":
    raise ValueError(f"unknown composition {name!r}; choose from {COMPOSED}")
  matrices = optax.chain(
    optax.scale_by_adam(config.b1, config.b2),
    _egd(config),
    optax.add_decayed_weights(config.adam_weight_decay),
    optax.scale_by_learning_rate(config.schedule(config.lr)),
  )
  rest = optax.adamw(
    config.schedule(config.adam_lr),
    config.b1,
    config.b2,
    weight_decay=config.adam_weight_decay,
  )

  def labels(params: Any) -> Any:
    return jax.tree.map(
      lambda is_matrix: "egd" if is_matrix else "adamw", kernel_mask(params)
    )

  return optax.partition({"egd": matrices, "adamw": rest}, labels)


def muon(
  config: OptimizerConfig, first_kernel: Path | None = None
) -> optax.GradientTransformation:
  """``optax.contrib.muon`` on the kernels (``muon_lr``, ``adam_weight_decay``)."""
  return optax.contrib.muon(
    config.schedule(config.muon_lr),
    weight_decay=config.adam_weight_decay,
    muon_weight_dimension_numbers=matrix_dimension_numbers,
  )


def egdm(
  config: OptimizerConfig,
  first_kernel: Path | None = None,
  name: str = "egdm",
  dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  """``optax_egd.egdm`` with the configured ``lr``, momentum (optimizer
  ``name``'s default when unset) and weight decay; ``dimension_numbers`` as
  ``egdm`` takes them (None: its default, the 2-D leaves)."""
  return optax_egd.egdm(
    config.schedule(config.lr),
    momentum=momentum(name, config),
    weight_decay=config.weight_decay,
    key=config.seed,
    method=config.polar_method,
    dimension_numbers=dimension_numbers,
  )


def egdm_kernels(
  config: OptimizerConfig, first_kernel: Path | None = None
) -> optax.GradientTransformation:
  """:func:`egdm` on the leaves ``muon`` treats as matrices: every kernel,
  the 3-D attention kernels as ``matrix_dimension_numbers`` flattens them;
  AdamW on the rest (embeddings included)."""
  return egdm(config, first_kernel, "egdm-kernels", matrix_dimension_numbers)


def preconditioned(
  name: str, base_name: str, config: OptimizerConfig, first_kernel: Path
) -> optax.GradientTransformation:
  """Preconditioner ``name`` in front of ``base_name`` (``sgd`` or ``adamw``)."""
  return optax.chain(
    preconditioner(name, config, first_kernel), base(base_name, config)
  )


def build(
  name: str, config: OptimizerConfig, first_kernel: Path
) -> optax.GradientTransformation:
  """The optimizer named ``name``: its :mod:`experiments.registry` builder.

  Args:
    name: optimizer name (one of :data:`experiments.registry.SPECS`).
    config: hyperparameters.
    first_kernel: path of the model's first kernel (``model.first_kernel``),
      used by ``egd-first-layer``.
  """
  return registry.get(name).builder()(config, first_kernel)
