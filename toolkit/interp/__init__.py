"""Looking inside models: hook registry, activation cache, logit lens, interventions.

    logits, cache = m.run_with_cache("The Eiffel Tower is in", names_filter="blocks.*.hook_resid_post")
    cache["resid_post", -1]; cache.logit_lens(k=5)
    with m.hooks(fwd_hooks=[("blocks.3.attn.hook_z", zero_ablate_heads([(3, 0)])[0][1])]): ...

Hook functions are TransformerLens's: fn(tensor, hook) with hook.name, hook.layer(), hook.ctx; they
may edit the tensor in place or return a replacement of the same shape. See docs/hooks.md.
"""
from ..models.hook_points import HookPoint, ReadOnly, Span, UnknownHookError
from .cache import ActivationCache, CacheKeyError, LogitLens, run_with_cache, run_with_hooks
from .interventions import mean_ablate_heads, steering_hooks, zero_ablate_heads
from .patching import PatchingResult, activation_patching, logit_diff_metric
from .registry import add_hook, add_hooks, hook_names, hooks, read_only, remove_hooks, reset_hooks, resolve

__all__ = [
    "ActivationCache", "CacheKeyError", "HookPoint", "LogitLens", "PatchingResult", "ReadOnly", "Span",
    "UnknownHookError", "activation_patching", "add_hook", "add_hooks", "hook_names", "hooks",
    "logit_diff_metric", "mean_ablate_heads", "read_only", "remove_hooks", "reset_hooks", "resolve",
    "run_with_cache", "run_with_hooks", "steering_hooks", "zero_ablate_heads",
]
