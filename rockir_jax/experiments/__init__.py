"""Experiments over trained models: the comparison table (``rockir-compare``) and the few-shot study."""
