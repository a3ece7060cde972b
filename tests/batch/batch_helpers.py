"""Shared by the BatchManager tests: the reference each request is compared with is the same
request generated alone, one forward pass for the whole prompt, then one per token."""
from toolkit.common.generation import Sampler, SamplingParams, eos_ids

# Prompts of mixed lengths (1 to ~60 tokens) and mixed sampling settings.
TEXTS = [
    "Hi",
    "The capital of France is",
    "Water boils at",
    "Once upon a time, in a small village at the edge of a vast and ancient forest, there lived an old "
    "woodcutter and his three daughters, who were known across the land for their kindness and wit.",
    "1 2 3 4 5 6 7 8",
    "def fibonacci(n):",
    "The three primary colours are",
    "Translate to French: good morning, my friend. How are you today?",
    "Q: What is the largest planet in the solar system?\nA:",
    "In 1969, the first humans",
    "A haiku about autumn leaves:",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Photosynthesis is the process by which plants",
    "My favourite food is",
    "List three uses of copper: 1.",
    "The best way to learn a new language is to speak it every day with people who",
]


def sampling_for(i, max_new_tokens=4):
    """Greedy, seeded temperature, top-k and repetition-penalty settings in turn."""
    kinds = [dict(), dict(temperature=0.9, seed=100 + i), dict(temperature=0.7, top_k=20, seed=i),
             dict(repetition_penalty=1.3)]
    return dict(max_new_tokens=max_new_tokens, **kinds[i % len(kinds)])


def row_bytes(t):
    return t.contiguous().memoryview().tobytes()


def alone(lm, prompt, **sampling):
    """(token ids, logits rows as bytes) of one request run by itself, as generate_ids runs it."""
    params = SamplingParams(**sampling)
    sampler = Sampler(params, prompt, eos_ids(lm))
    cache = lm.new_cache(len(prompt) + params.max_new_tokens)
    logits = lm.forward_batch([(prompt, cache)], logits="last")
    toks, rows = [], []
    while True:
        rows.append(row_bytes(logits))  # before the sampler's penalty edits it
        tok = sampler.next(logits)
        if tok is None:
            return toks, rows
        toks.append(tok)
        if sampler.done:
            return toks, rows
        logits = lm.forward_batch([([tok], cache)], logits="last")
