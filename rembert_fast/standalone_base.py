"""The model bases used where transformers does not import: what `transformers.PreTrainedModel` and its
`GradientCheckpointingLayer` give rembert_fast's models, with the same names and behaviour.

- `StandaloneCheckpointingLayer`: a layer whose `forward` recomputes itself in the backward pass when
  its `gradient_checkpointing` flag is set, in training with gradients recorded.
- `StandaloneModel`: `post_init` (initialise each module not initialised yet, then honour a config's
  `gradient_checkpointing: true`) and the activation-checkpointing switches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn


class StandaloneCheckpointingLayer(nn.Module):
    """A layer that subclasses recompute in the backward pass when `gradient_checkpointing` is set.

    The layer's positional arguments go through the checkpoint (the tensors that need gradients must be
    positional, as in transformers); keyword arguments are bound as they are.
    """

    gradient_checkpointing = False
    _gradient_checkpointing_func: Callable[..., Any] = functools.partial(
        torch.utils.checkpoint.checkpoint, use_reentrant=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        forward = cls.forward

        @functools.wraps(forward)
        def forward_with_checkpointing(self: StandaloneCheckpointingLayer, *args: Any, **kw: Any) -> Any:
            # A subclass of a subclass is wrapped twice: only the outer wrapper recomputes.
            outermost = type(self).forward is forward_with_checkpointing
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and outermost:
                return self._gradient_checkpointing_func(functools.partial(forward, self, **kw), *args)
            return forward(self, *args, **kw)

        cls.forward = forward_with_checkpointing


class StandaloneModel(nn.Module):
    """`torch.nn.Module` with transformers' `post_init` and activation-checkpointing methods.

    Subclasses define `config`, `init_weights()` (initialise what is not initialised yet) and
    `supports_gradient_checkpointing`.
    """

    config: Any
    supports_gradient_checkpointing = False

    def init_weights(self) -> None:
        raise NotImplementedError

    def post_init(self) -> None:
        """Initialise what is not initialised yet (`init_weights`); a config whose
        `gradient_checkpointing` is true turns checkpointing on, and the key is consumed (transformers)."""
        self.init_weights()
        if self.supports_gradient_checkpointing and getattr(self.config, "gradient_checkpointing", False):
            self.activation_checkpointing_enable()
            delattr(self.config, "gradient_checkpointing")

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """Recompute every `every_n_layers`-th layer in the backward pass instead of keeping its activations.

        Args:
            activation_checkpointing_kwargs: keywords of `torch.utils.checkpoint.checkpoint` (default
                `use_reentrant=False`).
            every_n_layers: checkpoint layers 0, n, 2n, ...; 1 checkpoints every layer.
            offload: keep what the recomputation saves in (pinned) host memory.

        Raises:
            ValueError: the model does not support checkpointing, or `every_n_layers` is not positive.
        """
        if not self.supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support activation checkpointing.")
        if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers={every_n_layers!r} must be a positive integer")
        options = {"use_reentrant": False} if activation_checkpointing_kwargs is None else dict(
            activation_checkpointing_kwargs)

        def recompute(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if not offload:
                return torch.utils.checkpoint.checkpoint(function, *args, **options, **kwargs)
            with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
                return torch.utils.checkpoint.checkpoint(function, *args, **options, **kwargs)

        self._set_checkpointing(True, recompute, every_n_layers)

    def activation_checkpointing_disable(self) -> None:
        self._set_checkpointing(False, None, 1)

    def _set_checkpointing(self, enable: bool, recompute: Callable[..., Any] | None,
                           every_n_layers: int) -> None:
        index = 0
        for module in self.modules():
            if isinstance(module, StandaloneCheckpointingLayer):
                module.gradient_checkpointing = enable and index % every_n_layers == 0
                index += 1
                if recompute is not None:
                    module._gradient_checkpointing_func = recompute

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **kwargs: Any) -> None:
        """transformers' older name of `activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing
