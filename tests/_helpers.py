"""Helpers shared by the test modules (imported as ``_helpers``)."""

from collections.abc import Iterator
import contextlib

import jax


@contextlib.contextmanager
def count_compiles() -> Iterator[list[str]]:
  """Counts XLA backend compilations inside the block."""
  events: list[str] = []

  def listener(name: str, _secs: float, **_: object) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    _unregister(listener)


def _unregister(listener: object) -> None:
  """Removes a duration listener (public API from jax 0.8.1 on)."""
  unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
  if unregister is None:  # jax < 0.8.1
    from jax._src import monitoring

    unregister = monitoring._unregister_event_duration_listener_by_callback
  unregister(listener)


def enable_x64(on: bool = True):
  """``jax.enable_x64(on)``; jax < 0.8 has it as ``jax.experimental``'s."""
  import jax

  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(on)
  from jax.experimental import enable_x64 as experimental_enable_x64

  return experimental_enable_x64(on)
