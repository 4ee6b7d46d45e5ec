"""Losses as small ``nn.Module`` s, each documenting the paper, equation and shapes it follows."""
