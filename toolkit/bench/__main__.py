"""`python -m toolkit.bench {kernels,generate,hooks,batch,profiler} [options]`: dispatches to one benchmark module.

Each benchmark is imported only when asked for, so one that needs optional packages (llama.cpp for
`generate`) does not slow down or break the others.
"""
import importlib
import sys

_BENCHES = {
    "kernels": "toolkit.bench.kernels",    # matmul / GEMV kernels vs memory bandwidth
    "generate": "toolkit.bench.generate",  # end-to-end prefill and decode speed
    "hooks": "toolkit.bench.hooks",        # decode speed with hooks and caches on
    "profiler": "toolkit.bench.profiler",  # decode speed with the profiler on, off, compiled out
    "batch": "toolkit.bench.batch",        # continuous-batching throughput at 1..16 sequences
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in _BENCHES:
        names = ", ".join(_BENCHES)
        print(f"usage: python -m toolkit.bench {{{names.replace(', ', ',')}}} [options]  (--help after a name)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(_BENCHES[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
