"""Looking inside models: hook registry, activation cache, logit lens, interventions.

    logits, cache = m.run_with_cache("The Eiffel Tower is in")
    cache["resid_post", -1]; cache["pattern", 0]; print(cache.logit_lens(k=5))
    m.run_with_hooks("The Eiffel Tower is in", fwd_hooks=zero_ablate_heads(m, [(3, 0), (3, 5)]))
    m.generate("I think", fwd_hooks=steering_hooks(m, layer=6, vector=v, scale=8.0))
    activation_patching(m, clean, corrupted, hook="resid_pre", answer=" Paris", wrong=" Rome")
    induction_scores(m, repeated_sequences, period=20, start=1)      # [layer][head]

Hook functions are TransformerLens's: fn(tensor, hook) with hook.name, hook.layer(), hook.ctx; they
may edit the tensor in place or return a replacement of the same shape. See docs/hooks.md.
"""
from ..models.hook_points import HookPoint, ReadOnly, Span, UnknownHookError
from .cache import ActivationCache, CacheKeyError, LogitLens, run_with_cache, run_with_hooks
from .interventions import mean_ablate_heads, steering_hooks, zero_ablate_heads
from .patching import PatchingResult, activation_patching, logit_diff_metric
from .scores import induction_scores
from .registry import add_hook, add_hooks, hook_names, hooks, read_only, remove_hooks, reset_hooks, resolve

__all__ = [
    "ActivationCache", "CacheKeyError", "HookPoint", "LogitLens", "PatchingResult", "ReadOnly", "Span",
    "UnknownHookError", "activation_patching", "add_hook", "add_hooks", "hook_names", "hooks", "induction_scores",
    "logit_diff_metric", "mean_ablate_heads", "read_only", "remove_hooks", "reset_hooks", "resolve",
    "run_with_cache", "run_with_hooks", "steering_hooks", "zero_ablate_heads",
]
