"""CI-only stand-in for ``sgl_kernel`` (SGLang's CUDA kernel wheel, which has no CPU build).

SGLang 0.5.20/0.5.21 import a few names from it at load time even on the CPU engine path,
which never calls them. Every attribute here is a function that raises: if CPU SGLang ever
does call one, the test fails loudly instead of computing anything. Never on a user's install
path: only the tq-sglang nox sessions put this folder on PYTHONPATH.
"""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"sgl_kernel.{name} was called: it is a CI-only stand-in on CPU")

    unavailable.__name__ = name
    return unavailable
