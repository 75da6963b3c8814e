"""polyalign: post-training recipes for multilingual LLMs (SFT, reward models, arbitrage, DPO, merging)."""

__version__ = "0.1.0"
