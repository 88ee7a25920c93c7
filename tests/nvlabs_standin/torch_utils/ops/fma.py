import torch


def fma(a, b, c):
    return torch.addcmul(c, a, b)
