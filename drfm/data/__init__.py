"""Data in and out: the dataset registry and loaders (:mod:`drfm.data.datasets`, local files in
:mod:`drfm.data.local`), reading and writing arrays and tables (:mod:`drfm.data.io`), and drfm's safe model files
(:mod:`drfm.data.models`: arrays and JSON, no pickle)."""
from .datasets import available, load
from .models import load_model, read_header, save_model

__all__ = ["available", "load", "load_model", "read_header", "save_model"]
