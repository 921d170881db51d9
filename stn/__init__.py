"""stn: spatial-transformer and attention-crop models.

``from stn import load_model``: a trained checkpoint for use on your images (:mod:`stn.inference`).
"""

__all__ = ["load_model"]


def __getattr__(name: str):
    # Lazy, so that `import stn.ops` stays plain PyTorch (no Hydra, no Lightning).
    if name == "load_model":
        from stn.inference import load_model

        return load_model
    raise AttributeError(f"module 'stn' has no attribute {name!r}")
